"""The caller's side of an SDK candidate run by the SDK's own code, as NxDI's gpt-oss model runs it: its
KV-cache manager (GptOssKVCacheManager, modules/kvcache/gpt_oss_kv_cache_manager.py) holds and updates
the caches, and NeuronBaseModel's mask builders (models/model_base.py) make the masks. A user who ships
their own names them in `--neuron-config` (`cache_manager`, `mask_builder`: import paths), driven the
same way. The harness's own copies (harness/neuron/cache.py, masks.py) stay the expectation the driver
checks these against after every step (harness/neuron/crosscheck.py).

How NxDI's model calls them (NxDI 2.29):
- the manager is built as `GptOssKVCacheManager(config, num_kv_head=..., global_rank=..., sliding_window=W)`;
  its caches are [batch, kv heads per rank, L, d] per layer, L = max_length on full layers and W-1
  rounded up to 128 on sliding ones (layer parity decides, as the model's `layer % 2 == 0`);
- after context encoding `update_kv_by_layer_id(is_for_context_encoding=True, ...)` fills the prefix;
  after each token-generation step the same with False scatters the step's keys at `pos` (full) or
  `pos % (W-1)` (sliding); the caches it returns are written back (on a device the runtime aliases them);
- before a step the module gets `get_kv_by_layer_id(idx, seq_len)`;
- masks (gpt-oss has mixed attention): sliding layers get `_create_windowed_attn_mask_cte(mask, W)` /
  `_create_windowed_attn_mask_tkg(mask, W, position_ids)`, full layers `_create_context_attn_mask(mask)`
  / `_create_simple_attn_mask(mask)`; `mask` is the caller's 2-D attention mask [batch, n_positions]
  (1: a real token of the context; in token generation, a position already in the cache).
The manager is built for two layers (one of each kind) whatever the case's layer, so a layer-35 case does
not allocate 36 layers of caches; the parity of the case's layer picks which one is used.
"""

from __future__ import annotations

import importlib
import types

import torch

from harness.batch import BlockSpec


def _imported(path: str, what: str):
    module_name, _, attr = path.partition(":")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ValueError(f"--neuron-config {what} {path!r}: cannot import it ({exc}); expected MODULE:CLASS, "
                         "importable from where the harness runs") from None


def default_parts() -> tuple[type | None, type | None]:
    """(the SDK's cache manager class, its model class holding the mask builders); None where the SDK
    has no such thing (2.26: no gpt-oss model, so no GptOssKVCacheManager)."""
    try:
        from neuronx_distributed_inference.modules.kvcache.gpt_oss_kv_cache_manager import GptOssKVCacheManager
    except ImportError:
        GptOssKVCacheManager = None
    try:
        from neuronx_distributed_inference.models.model_base import NeuronBaseModel
    except ImportError:
        NeuronBaseModel = None
    return GptOssKVCacheManager, NeuronBaseModel


class UpstreamServing:
    """One layer's caches and masks, by the SDK's code (or the user's)."""

    def __init__(self, spec: BlockSpec, tp_degree: int = 1, cache_manager: str | None = None,
                 mask_builder: str | None = None):
        manager_cls, model_cls = default_parts()
        if cache_manager:
            manager_cls = _imported(cache_manager, "cache_manager")
        if mask_builder:
            model_cls = _imported(mask_builder, "mask_builder")
        self.spec, self.tp_degree = spec, tp_degree
        self.manager_cls, self.model_cls = manager_cls, model_cls
        self.window = spec.window
        self.idx = spec.layer_idx % 2  # the manager's layer of the same kind (see the module's note)
        self.manager = None
        self.calls: list[str] = []  # what ran, in order (reported, and read by the tests)

    @property
    def names(self) -> dict[str, str]:
        """What holds the caches and makes the masks, for the result's info."""
        def name(cls):
            return f"{cls.__module__}.{cls.__qualname__}" if cls is not None else "the harness's model (the SDK has none)"
        return {"cache_manager": name(self.manager_cls), "mask_builder": name(self.model_cls)}

    @property
    def ring(self) -> int | None:
        """The sliding ring the manager keeps (after `start`; None on a full layer)."""
        return int(self.manager.sliding_window) if self.window and self.manager is not None else None

    # -- masks -------------------------------------------------------------------------------------
    def _model(self, rows: int, n_positions: int):
        """NeuronBaseModel's mask builders read these attributes of the model (models/model_base.py)."""
        return types.SimpleNamespace(n_positions=n_positions, batch_size=rows, padding_side="right",
                                     is_prefix_caching=False, prefix_size=0, sliding_window=self.window,
                                     neuron_config=types.SimpleNamespace(enable_fused_speculation=False))

    def context_mask(self, real: torch.Tensor) -> torch.Tensor | None:
        """real [rows, S]: 1 for each real token. None without mask builders."""
        if self.model_cls is None:
            return None
        model = self._model(*real.shape)
        if self.window:
            self.calls.append("_create_windowed_attn_mask_cte")
            return self.model_cls._create_windowed_attn_mask_cte(model, real, self.window)
        self.calls.append("_create_context_attn_mask")
        return self.model_cls._create_context_attn_mask(model, real)

    def generation_mask(self, cached: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor | None:
        """cached [rows, L]: 1 for each position already in the cache; position_ids [rows, 1]."""
        if self.model_cls is None:
            return None
        model = self._model(*cached.shape)
        if self.window:
            self.calls.append("_create_windowed_attn_mask_tkg")
            return self.model_cls._create_windowed_attn_mask_tkg(model, cached, self.window, position_ids)
        self.calls.append("_create_simple_attn_mask")
        return self.model_cls._create_simple_attn_mask(model, cached)

    # -- the cache manager ------------------------------------------------------------------------------
    def _manager(self, rows: int, slots: int):
        from harness.neuron import nxdi

        config = nxdi.inference_config(self.spec, rows, on_cpu=True, max_length=slots, tp_degree=self.tp_degree, layers=2)
        kv = self.spec.config.num_key_value_heads
        from harness.quiet import third_party_output_to_stderr

        with third_party_output_to_stderr():  # GptOssKVCacheManager prints each layer's cache shape
            return self.manager_cls(config, num_kv_head=kv, global_rank=None, sliding_window=self.spec.config.sliding_window)

    def start(self, rows: int, slots: int) -> bool:
        """A fresh manager for a batch of `rows`, full caches of `slots`. False without a manager."""
        if self.manager_cls is None:
            return False
        self.manager = self._manager(rows, slots)
        return True

    def hold(self, k: torch.Tensor, v: torch.Tensor) -> None:
        """Put `k`, `v` in the manager's cache of this layer: the harness's poison before anything is
        written (NxDI's cache starts as zeros; poison tells what it never wrote apart), or a prefix
        served earlier (plan from_cache)."""
        held_k, held_v = self._buffers()
        if held_k.shape != k.shape:
            raise ValueError(f"the cache manager keeps a cache of {list(held_k.shape)} for this layer, the harness "
                             f"expected {list(k.shape)} [rows, kv heads per rank, slots, head_dim]")
        with torch.no_grad():
            held_k.copy_(k)
            held_v.copy_(v)

    def held(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The manager's cache of this layer, as it holds it."""
        k, v = self._buffers()
        return k.detach(), v.detach()

    def _buffers(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.manager.past_key_values[2 * self.idx], self.manager.past_key_values[2 * self.idx + 1]

    def _update(self, context: bool, k: torch.Tensor, v: torch.Tensor, position_ids: torch.Tensor) -> None:
        rows = k.shape[0]
        self.calls.append("update_kv_by_layer_id")
        with torch.no_grad():
            new_k, new_v = self.manager.update_kv_by_layer_id(
                idx=self.idx, is_for_context_encoding=context, seq_ids=torch.arange(rows, dtype=torch.int32),
                position_ids=position_ids, kv_per_layer=(k, v), seq_len=self._buffers()[0].shape[2])
            held_k, held_v = self._buffers()
            if new_k.data_ptr() != held_k.data_ptr():  # written back, as the runtime aliases them on a device
                held_k.copy_(new_k)
            if new_v.data_ptr() != held_v.data_ptr():
                held_v.copy_(new_v)

    def after_context(self, k, v, position_ids) -> None:
        self._update(True, k, v, position_ids)

    def after_generation(self, k, v, position_ids) -> None:
        self._update(False, k, v, position_ids)

    def cache(self) -> tuple[torch.Tensor, torch.Tensor]:
        """What the module reads in the next token-generation step."""
        self.calls.append("get_kv_by_layer_id")
        return self.manager.get_kv_by_layer_id(idx=self.idx, seq_len=self._buffers()[0].shape[2])
