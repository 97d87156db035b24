"""The SDK's caller-side code faked (no SDK here), written for these tests with the interfaces the
harness drives (harness/neuron/upstream.py): a KV-cache manager with GptOssKVCacheManager's calls and
cache layout, and a model class with NeuronBaseModel's mask builders. Both record what was called, and
each has a knob that plants a real way to get it wrong."""

import sys
import types

import torch

from harness.neuron import nxdi

CALLS: list[str] = []


class FakeCacheManager(torch.nn.Module):
    """Caches [rows, kv, L, d] for a sliding layer (0: a ring of W-1 slots in 128) and a full one (1: L =
    max_length); context encoding fills the prefix, token generation scatters at pos % (W-1) or pos."""

    ring_modulus_offset = -1  # the ring is W + this: -1 is NxDI's W-1; 0 plants the `pos % W` bug

    def __init__(self, config, num_kv_head, global_rank, sliding_window):
        super().__init__()
        CALLS.append("__init__")
        self.sliding_window = sliding_window - 1  # as NxDI's: the ring the handover fills
        self.modulus = sliding_window + self.ring_modulus_offset
        n = config.neuron_config
        shapes = [(n.max_batch_size, num_kv_head, 128, config.head_dim),
                  (n.max_batch_size, num_kv_head, n.max_length, config.head_dim)]
        self.past_key_values = torch.nn.ParameterList(
            [torch.nn.Parameter(torch.zeros(shape, dtype=n.torch_dtype), requires_grad=False)
             for shape in shapes for _ in "kv"])

    def _layer(self, idx):
        return self.past_key_values[2 * idx], self.past_key_values[2 * idx + 1]

    def get_kv_by_layer_id(self, idx, seq_len, **kwargs):
        CALLS.append("get_kv_by_layer_id")
        return self._layer(idx)

    def update_kv_by_layer_id(self, idx, is_for_context_encoding, seq_ids, position_ids, kv_per_layer, seq_len,
                              **kwargs):
        CALLS.append("update_kv_by_layer_id")
        caches = []
        for cache, new in zip(self._layer(idx), kv_per_layer):
            cache = cache.clone()
            if is_for_context_encoding:
                cache[:, :, : new.shape[2]] = new
            else:
                slots = position_ids % self.modulus if idx % 2 == 0 else position_ids
                cache.scatter_(2, slots[:, None, :, None].expand_as(new), new)
            caches.append(cache)
        return tuple(caches)


class FakeModel:
    """NeuronBaseModel's four mask builders, as the gpt-oss model calls them; `window_offset` plants a
    sliding window one key too wide (+1) in the token-generation mask."""

    window_offset = 0

    def _create_context_attn_mask(self, attention_mask):
        CALLS.append("_create_context_attn_mask")
        mask = torch.ones(self.n_positions, self.n_positions, dtype=torch.bool).tril()
        return mask[None, None].expand(self.batch_size, 1, -1, -1)

    def _create_windowed_attn_mask_cte(self, attention_mask, window_size):
        CALLS.append("_create_windowed_attn_mask_cte")
        i, j = torch.arange(self.n_positions)[:, None], torch.arange(self.n_positions)[None, :]
        return ((j <= i) & (j > i - window_size))[None, None].expand(self.batch_size, 1, -1, -1)

    def _create_simple_attn_mask(self, attention_mask):
        CALLS.append("_create_simple_attn_mask")
        return attention_mask[:, None, None, :].bool()

    def _create_windowed_attn_mask_tkg(self, attention_mask, window_size, position_ids):
        CALLS.append("_create_windowed_attn_mask_tkg")
        visible = window_size - 1 + FakeModel.window_offset
        idx = torch.arange(window_size)[None, :]
        return ((idx < position_ids[:, :1]) & (idx < visible))[:, None, None, :]


def install(monkeypatch, manager=FakeCacheManager, model=FakeModel) -> list[str]:
    """Make the harness find `manager` and `model` where it looks for the SDK's; returns the call log."""
    CALLS.clear()
    kv = types.ModuleType("neuronx_distributed_inference.modules.kvcache.gpt_oss_kv_cache_manager")
    kv.GptOssKVCacheManager = manager
    base = types.ModuleType("neuronx_distributed_inference.models.model_base")
    base.NeuronBaseModel = model
    for name in ("neuronx_distributed_inference", "neuronx_distributed_inference.modules",
                 "neuronx_distributed_inference.modules.kvcache", "neuronx_distributed_inference.models"):
        module = sys.modules.get(name) or types.ModuleType(name)
        module.__path__ = []  # a package, so that its submodules below are found in sys.modules
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setitem(sys.modules, kv.__name__, kv)
    monkeypatch.setitem(sys.modules, base.__name__, base)

    def inference_config(spec, batch, on_cpu, max_length=8192, tp_degree=1, layers=None, flags=None):
        c = spec.config
        return types.SimpleNamespace(head_dim=c.head_dim, neuron_config=types.SimpleNamespace(
            max_batch_size=batch, max_length=max_length, torch_dtype=spec.dtype))

    monkeypatch.setattr(nxdi, "inference_config", inference_config)
    return CALLS
