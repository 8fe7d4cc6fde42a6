"""Attention per device: what ``auto`` picks, readable errors for kernels that cannot run here,
and packed rows whose logits equal each example's own, for every implementation that runs on
this machine."""

from __future__ import annotations

import pytest
import torch

from ftmagic.errors import RunError
from ftmagic.train import attention

VOCAB = 97


def _model() -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    return LlamaForCausalLM(config).eval()


def test_auto_keeps_sdpa_on_cpus_and_unpacked_rows() -> None:
    assert attention.resolve("auto", device_type="cpu", packing=True) == "sdpa"
    assert attention.resolve("auto", device_type="cuda", packing=False) == "sdpa"
    assert attention.resolve("flex_attention", device_type="cpu", packing=True) == (
        "flex_attention"
    )


def test_auto_takes_a_varlen_kernel_for_packed_rows_on_cuda(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Whether flash-attn is installed is the one input; both answers are exercised.
    monkeypatch.setattr(attention, "flash_attention_installed", lambda: False)
    assert attention.resolve("auto", device_type="cuda", packing=True) == "flex_attention"
    monkeypatch.setattr(attention, "flash_attention_installed", lambda: True)
    assert attention.resolve("auto", device_type="cuda", packing=True) == "flash_attention_2"


def test_flash_attention_on_a_cpu_is_a_readable_error() -> None:
    with pytest.raises(RunError, match=r"flash_attention_2 needs a CUDA GPU\. Fix: use"):
        attention.check("flash_attention_2", device_type="cpu")
    attention.check("sdpa", device_type="cpu")
    attention.check("flex_attention", device_type="cpu")


# flex_attention runs on CPUs too (torch 2.13; it agreed to 1.2e-7 here), but it first compiles
# its kernel with inductor, which took about half an hour on 2 shared cores. benchmarks/gpu_check.py
# makes the same packed-equals-alone check for flex_attention and flash-attention on a GPU.
@pytest.mark.parametrize("name", ["sdpa", "eager"])
def test_packed_logits_equal_each_examples_own(name: str) -> None:
    model = _model()
    attention.apply(model, name)
    assert model.config._attn_implementation == name
    gen = torch.Generator().manual_seed(2)
    first = torch.randint(0, VOCAB, (1, 11), generator=gen)
    second = torch.randint(0, VOCAB, (1, 5), generator=gen)
    packed = torch.cat([first, second], dim=1)
    positions = torch.cat([torch.arange(11), torch.arange(5)]).unsqueeze(0)
    with torch.no_grad():
        together = model(input_ids=packed, position_ids=positions, use_cache=False).logits
        alone_first = model(input_ids=first, use_cache=False).logits
        alone_second = model(input_ids=second, use_cache=False).logits
    torch.testing.assert_close(together[:, :11], alone_first, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(together[:, 11:], alone_second, atol=1e-5, rtol=1e-4)
    # Without the boundaries the second example would see the first: the check has teeth.
    with torch.no_grad():
        leaked = model(input_ids=packed, use_cache=False).logits
    assert (leaked[:, 11:] - alone_second).abs().max() > 1e-3
