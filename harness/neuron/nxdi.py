"""Building NxDI's attention modules from a case's spec, and running them eagerly (CPU mode; compiled on
a Neuron device: harness/neuron/device.py). Only these modules, harness/neuron/tp.py's SDK rank
function and harness/neuron/block.py import the SDK.

Traps handled here (shared notes/nxdi.md): attention_bias must be True or the q/k/v/o biases are
silently absent; the nn.Linear projections are created in float32 whatever torch_dtype says, so the
module is cast; LearnedSink's constructor initialises a one-process model-parallel state, after which
modules get Column/RowParallelLinear, so it is torn down after every build; kernels are switched off
(attn_kernel_enabled=False): the native path is what CPU mode runs and what the sinks are defined on.
"""

from __future__ import annotations

import copy
import importlib
import inspect
import os

import torch

from harness.batch import BlockSpec
from harness.neuron.config import deployment
from harness.neuron.layer import EagerLayer, NeuronLayer, load_layer
from harness.quiet import third_party_output_to_stderr

MAX_LENGTH = 8192  # the config's max_length / seq_len: the largest bucket a module is built for


def teardown_parallel_state() -> None:
    """Undo LearnedSink's fallback model-parallel state, so that the next module gets plain Linear layers."""
    from neuronx_distributed.parallel_layers import parallel_state

    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def inference_config(spec: BlockSpec, batch: int, on_cpu: bool, max_length: int = MAX_LENGTH, tp_degree: int = 1,
                     layers: int | None = None, flags: dict | None = None):
    """GptOssInferenceConfig (SDK 2.27+), or a plain InferenceConfig with the same fields (2.26).
    `layers`: num_hidden_layers (default: enough for the case's layer); `flags`: the deployment's
    NeuronConfig flags (harness/neuron/config.py; kernels stay off unless they say otherwise)."""
    c = spec.config
    neuron_args = dict(tp_degree=tp_degree, batch_size=batch, max_batch_size=batch, seq_len=max_length, max_length=max_length,
                       max_context_length=max_length, on_cpu=on_cpu, torch_dtype=spec.dtype, attn_kernel_enabled=False,
                       logical_nc_config=int(os.environ.get("NEURON_LOGICAL_NC_CONFIG", "1")))
    neuron_args.update(flags or {})
    fields = dict(hidden_size=c.hidden_size, head_dim=c.head_dim, num_attention_heads=c.num_attention_heads,
                  num_key_value_heads=c.num_key_value_heads, num_hidden_layers=layers or max(spec.layer_idx + 1, 2),
                  sliding_window=c.sliding_window, initial_context_length=c.initial_context_length,
                  rope_theta=c.rope_theta, rope_scaling_factor=c.rope_scaling_factor, rope_ntk_alpha=c.rope_ntk_alpha,
                  rope_ntk_beta=c.rope_ntk_beta, attention_bias=True,
                  # required by the config's validator, never read by attention
                  num_local_experts=1, num_experts_per_tok=1, vocab_size=32, intermediate_size=c.hidden_size,
                  pad_token_id=0, rms_norm_eps=1e-5)
    try:
        from neuronx_distributed_inference.models.gpt_oss.modeling_gpt_oss import GptOssInferenceConfig, GptOssNeuronConfig
    except ImportError:  # SDK 2.26: no upstream gpt-oss model
        from neuronx_distributed_inference.models.config import InferenceConfig, NeuronConfig

        return InferenceConfig(NeuronConfig(**neuron_args), **fields)
    return GptOssInferenceConfig(GptOssNeuronConfig(**neuron_args), **fields)


def layer_config(config, layer_idx: int):
    """Per-layer config: even layers slide (sliding_window W), odd ones get None (as get_updated_configs)."""
    try:
        from neuronx_distributed_inference.models.gpt_oss.modeling_gpt_oss import get_updated_configs

        return get_updated_configs(config)[layer_idx]
    except ImportError:
        updated = copy.deepcopy(config)
        if layer_idx % 2:
            updated.sliding_window = None
        return updated


def user_class(path: str):
    from neuronx_distributed_inference.modules.attention.attention_base import NeuronAttentionBase

    module_name, _, attr = path.partition(":")
    try:
        cls = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"candidate neuron:{path}: cannot load {path} ({exc})") from None
    if not (isinstance(cls, type) and issubclass(cls, NeuronAttentionBase)):
        raise ValueError(f"candidate neuron:{path}: {path} is not a NeuronAttentionBase subclass; a Neuron candidate "
                         "is an NxDI attention module (README \"Running on a Neuron host\"); wrap any other block as a "
                         "plain candidate (README \"Plugging in your own block\")")
    return cls


def own_rendezvous_port() -> None:
    """Give this process a free loopback port for NxD's one-process fallback process group (which
    LearnedSink starts while a module is built), unless the caller chose one. Its default MASTER_PORT,
    29500, made two processes building modules at once (pytest -n 2, parallel CI jobs) fail with
    EADDRINUSE and an `error` verdict."""
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    if "MASTER_PORT" not in os.environ:
        from harness.machine import free_port

        os.environ["MASTER_PORT"] = str(free_port())


def build_attention(kind: str, class_path: str | None, spec: BlockSpec, batch: int, on_cpu: bool,
                    tp_degree: int = 1, flags: dict | None = None):
    """The attention module for one layer, cast to the case's dtype. At tp_degree 1 the parallel state
    is torn down before and after; above it, the rank's process holds the model-parallel state its
    launcher initialised (harness/neuron/tp.py), and the module is built sharded in it. `flags`: the
    deployment's NeuronConfig flags."""
    if tp_degree == 1:
        own_rendezvous_port()
        teardown_parallel_state()
    config = layer_config(inference_config(spec, batch, on_cpu, tp_degree=tp_degree, flags=flags), spec.layer_idx)
    if kind == "neuron":
        try:
            from neuronx_distributed_inference.models.gpt_oss.modeling_gpt_oss import NeuronGptOssAttention
        except ImportError as exc:
            raise ValueError(f"candidate neuron needs NxDI's gpt-oss model (SDK 2.27 or later; {exc}); with SDK 2.26 "
                             "use --candidate neuron-block") from None
        attention = NeuronGptOssAttention(config)
    elif kind == "neuron-block":
        from harness.neuron.block import gpt_oss_attention_class

        attention = gpt_oss_attention_class()(config, spec.layer_idx)
    else:
        cls = user_class(class_path)
        kwargs = {"layer_idx": spec.layer_idx} if "layer_idx" in inspect.signature(cls.__init__).parameters else {}
        attention = cls(config, **kwargs)
    if tp_degree == 1:
        teardown_parallel_state()
    return attention.to(spec.dtype).eval()


def make_layer(candidate, spec: BlockSpec):
    """What the driver calls in CPU mode: the module run eagerly here (on a device:
    harness/neuron/device.py). The SDK's logging goes to stderr (harness/quiet.py): its handlers on
    stdout are made on import, here, and would reach the table."""
    with third_party_output_to_stderr():
        attention = build_attention(candidate.kind, candidate.class_path, spec, 1, on_cpu=True,
                                    flags=deployment(candidate.config))
    return EagerLayer(load_layer(NeuronLayer(attention, spec.config.hidden_size), spec, candidate.bugs))
