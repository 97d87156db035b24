"""The gpt-oss attention block on CPU: a drop-in copy of OpenAI's reference and a float64 oracle.

`reference.gpt_oss` keeps the public names of `gpt_oss.torch.model` for the attention path and is
bit-identical to it in bfloat16 (tests/test_reference_identity.py proves it). `reference.oracle`
computes the same block with every stage in float64, row-selectively and in chunks.
"""
