"""A user's own gpt-oss attention on NxDI's NeuronAttentionBase, as README "Running on a Neuron host"
describes it (constructor: the per-layer config; NeuronAttentionBase's forward and state dict).
Importing this module needs the Neuron SDK: tests/test_neuron_sdk.py uses it only where it imports."""

from neuronx_distributed_inference.modules.attention.attention_base import NeuronAttentionBase

from harness.neuron.block import YarnRotary


class MyGptOssAttention(NeuronAttentionBase):
    def __init__(self, config):
        super().__init__(
            config=config,
            hidden_size=config.hidden_size,
            num_attention_heads=config.num_attention_heads,
            num_key_value_heads=config.num_key_value_heads,
            head_dim=config.head_dim,
            rotary_emb=YarnRotary(config),
            qkv_bias=True,
            o_bias=True,
            learned_sinks_size=1,
            sliding_window=config.sliding_window,  # None on odd layers: the per-layer config says so
        )
