"""Next-token NLL of the scored positions without the [rows, T, vocab] logits.

A causal LM's forward ends in `logits = lm_head(hidden)` over every position and the whole
vocabulary: on Gemma 3 270M (262k tokens) 1 GiB of fp32 logits for 8 rows of 128 tokens,
written once and read twice more by the log-softmax. Here the decoder stack runs alone (the
model's `base_model`), the hidden states of the scored positions (padding and the last position
of each row dropped) go through the LM head one slice of the vocabulary at a time, and a
running logsumexp with the target's logit picked from its slice gives

    nll = logsumexp(logits) - logits[target]

Each slice is computed exactly as the model computes those columns (the head's weight rows,
its bias, the model's final logit soft-capping, in the model's dtype, then fp32), so the
result equals the full computation up to the order of the fp32 sums (see tests).

`ChunkedHead.for_model` returns None when a model's head is not a plain `nn.Linear` after a
`base_model` (or accelerate moves it, or its config scales logits in a way not handled here);
`verify` compares both ways on a few tokens once, and callers fall back to the full logits
when either says no.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# Vocabulary slice and scored positions per step: 1024 x 16384 fp32 = 64 MiB at a time.
VOCAB_CHUNK = 16384
POSITION_BLOCK = 1024
# Config fields that rescale logits after the head, which this module does not reproduce.
_UNHANDLED_SCALES = ("logits_scaling", "logit_scale", "output_logits_scale")


class ChunkedHead:
    """The decoder stack and LM head of one causal LM, for `token_nll`."""

    def __init__(self, base: nn.Module, head: nn.Linear, softcap: Optional[float],
                 vocab_chunk: int = VOCAB_CHUNK, position_block: int = POSITION_BLOCK):
        self.base, self.head, self.softcap = base, head, softcap
        self.vocab_chunk, self.position_block = vocab_chunk, position_block

    @classmethod
    def for_model(cls, model: nn.Module, **kw) -> Optional["ChunkedHead"]:
        """The chunked head of `model`, or None when its head is not one this module knows."""
        base = getattr(model, "base_model", None)
        head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        if not isinstance(base, nn.Module) or base is model or type(head) is not nn.Linear:
            return None
        if hasattr(head, "_hf_hook") or head.weight.device.type == "meta":
            return None                       # accelerate places it: keep the model's own call
        config = getattr(model, "config", None)
        text = config.get_text_config() if hasattr(config, "get_text_config") else config
        if any(getattr(c, name, None) not in (None, 1, 1.0)
               for c in (config, text) for name in _UNHANDLED_SCALES):
            return None
        softcap = getattr(text, "final_logit_softcapping", None)
        return cls(base, head, float(softcap) if softcap else None, **kw)

    def _logits(self, hidden: Tensor, v0: int, v1: int) -> Tensor:
        """Columns v0:v1 of the model's logits for `hidden` [P, H], as fp32 [P, v1 - v0]."""
        bias = self.head.bias[v0:v1] if self.head.bias is not None else None
        logits = F.linear(hidden, self.head.weight[v0:v1], bias)
        if self.softcap is not None:          # as the modeling code: in the model's dtype
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits.float()

    def position_nll(self, hidden: Tensor, targets: Tensor) -> Tensor:
        """NLL (fp32 [P]) of `targets` [P] after hidden states `hidden` [P, H]."""
        V = self.head.weight.shape[0]
        out = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)
        for p0 in range(0, hidden.shape[0], self.position_block):
            h = hidden[p0:p0 + self.position_block]
            t = targets[p0:p0 + self.position_block]
            lse = torch.full((h.shape[0],), -math.inf, device=h.device)
            picked = torch.zeros(h.shape[0], device=h.device)
            for v0 in range(0, V, self.vocab_chunk):
                v1 = min(V, v0 + self.vocab_chunk)
                logits = self._logits(h, v0, v1)
                inside = (t >= v0) & (t < v1)
                picked = torch.where(
                    inside, logits.gather(1, (t - v0).clamp(0, v1 - v0 - 1)[:, None])[:, 0],
                    picked)
                # the slice's logsumexp in place (the target is already picked): max, then
                # exp(x - max) summed, without torch.logsumexp's two slice-sized temporaries
                top = logits.amax(dim=1, keepdim=True)
                top = torch.where(top.isfinite(), top, torch.zeros_like(top))   # as torch's
                chunk_lse = top[:, 0] + logits.sub_(top).exp_().sum(dim=1).log()
                lse = torch.logaddexp(lse, chunk_lse)
            out[p0:p0 + h.shape[0]] = lse - picked
        return out

    def token_nll(self, ids: Tensor, mask: Tensor) -> Tensor:
        """Next-token NLL of each predicted position, float64 [R, T-1] (0 at padding): the
        same as `nll.row_token_nll` on the full logits."""
        hidden = self.base(input_ids=ids, attention_mask=mask, use_cache=False)
        hidden = hidden.last_hidden_state if hasattr(hidden, "last_hidden_state") else hidden[0]
        scored = mask[:, 1:].bool()
        h = hidden[:, :-1][scored].to(self.head.weight.device)
        t = ids[:, 1:][scored].to(h.device)
        out = torch.zeros(ids.shape[0], ids.shape[1] - 1, dtype=torch.float64)
        out[scored.cpu()] = self.position_nll(h, t).double().cpu()
        return out

    def verify(self, model: nn.Module, ids: Tensor, mask: Tensor, full_nll) -> bool:
        """True when `token_nll` matches `full_nll(model, ids, mask)` (the model's own logits)
        on these few tokens within 1e-3 nats + 1e-3 relative in float32 (5e-2 in a 16-bit
        dtype, whose logits round at 2^-8 relative): a head or a post-processing step this
        module does not know shows up here as a mismatch (or an error)."""
        try:
            mine = self.token_nll(ids, mask)
        except (RuntimeError, TypeError, ValueError, AttributeError):
            return False
        ref = full_nll(model, ids, mask)
        tol = 1e-3 if self.head.weight.dtype == torch.float32 else 5e-2
        return bool(torch.allclose(mine, ref, rtol=tol, atol=tol))
