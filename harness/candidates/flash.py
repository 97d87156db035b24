"""A flash-attention-style block: the `flash` candidate (a benign variant of the reference).

Queries in tiles of 128, keys in tiles of 2048, an online softmax in float32 over bf16 inputs, and the
sink folded into the running normaliser: each row starts with max = sink and denominator = 1, so the
sink enlarges the denominator exactly as the extra column does, without ever being materialised.
Key tiles a query tile cannot see are skipped, as real kernels do. Scores and probabilities are
never materialised, so this candidate taps every stage but those two.
"""

from __future__ import annotations

import torch

from harness.candidates.emulation import EmulatedBlock

Q_TILE, K_TILE = 128, 2048


class FlashBlock(EmulatedBlock):
    def __init__(self, name: str = "flash", q_tile: int = Q_TILE, k_tile: int = K_TILE, **changes):
        super().__init__(name=name, **changes)
        self.q_tile, self.k_tile = q_tile, k_tile

    def attention(self, q, k, v, kv_of_head, keep, sinks, scale, stage):
        b, s, hq, d = q.shape
        n_keys = k.shape[1]
        out = torch.zeros(b, s, hq, d, dtype=torch.float32)
        for q0 in range(0, s, self.q_tile):
            qt = q[:, q0 : q0 + self.q_tile].float()  # [B, tq, H, d]
            tq = qt.shape[1]
            m = sinks.float()[None, :, None].expand(b, hq, tq).clone()  # running max, starting at the sink
            l = torch.ones(b, hq, tq)  # running denominator: exp(sink - m) = 1
            acc = torch.zeros(b, hq, tq, d)
            for k0 in range(0, n_keys, self.k_tile):
                visible = keep[:, q0 : q0 + tq, k0 : k0 + self.k_tile]  # [B, tq, tk]
                if not visible.any():
                    continue  # a kernel never reads a tile nothing can see
                kt = k[:, k0 : k0 + self.k_tile][:, :, kv_of_head].float()  # this tile's keys per query head
                st = torch.einsum("bqhd,bkhd->bhqk", qt, kt) * scale
                st = st.masked_fill(~visible[:, None], -float("inf"))
                m_new = torch.maximum(m, st.amax(dim=-1))
                correction = torch.exp(m - m_new)
                p = torch.exp(st - m_new[..., None])
                l = l * correction + p.sum(dim=-1)
                vt = v[:, k0 : k0 + self.k_tile][:, :, kv_of_head].float()
                acc = acc * correction[..., None] + torch.einsum("bhqk,bkhd->bhqd", p, vt)
                m = m_new
            out[:, q0 : q0 + tq] = (acc / l[..., None]).permute(0, 2, 1, 3)
        return stage("attn", out.to(q.dtype))
