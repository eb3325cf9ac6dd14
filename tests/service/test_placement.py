"""service.runtimes.placement and the options handed to ONNX Runtime and TensorFlow: pure functions, no GPU needed."""

from __future__ import annotations

import pytest

from service.errors import ModelLoadError
from service.runtimes import RuntimeOptions
from service.runtimes.onnx import cuda_provider_options, session_providers
from service.runtimes.placement import MIB, DeviceLedger, Gpu, plan, visible_gpus
from service.runtimes.savedmodel import memory_plan

LABEL = "model 'cnn' version 1"
GIB = 1024 * MIB
TWO_GPUS = [Gpu(0, "H200", 140 * GIB, 139 * GIB, "GPU-aaaa"), Gpu(1, "H200", 140 * GIB, 100 * GIB, "GPU-bbbb")]


# ----- which GPUs CUDA numbers -------------------------------------------------------------------------


def test_without_cuda_visible_devices_every_gpu_keeps_its_index() -> None:
    assert visible_gpus(TWO_GPUS, None) == TWO_GPUS


def test_cuda_visible_devices_selects_and_renumbers_like_cuda() -> None:
    only_second = visible_gpus(TWO_GPUS, "1")
    assert [(g.index, g.uuid) for g in only_second] == [(0, "GPU-bbbb")]
    swapped = visible_gpus(TWO_GPUS, "GPU-bb, 0")
    assert [(g.index, g.uuid) for g in swapped] == [(0, "GPU-bbbb"), (1, "GPU-aaaa")]


@pytest.mark.parametrize("value", ["", "7", "7,0", "MIG-1", "GPU-zz", "0,0"])
def test_cuda_visible_devices_ends_at_the_first_entry_naming_no_gpu(value: str) -> None:
    expected = [0] if value == "0,0" else []
    assert [g.index for g in visible_gpus(TWO_GPUS, value)] == expected


# ----- the placement plan --------------------------------------------------------------------------------


def test_a_cpu_model_or_a_host_without_gpus_gets_exactly_one_session_with_the_base_options() -> None:
    base = RuntimeOptions(device="auto", gpu_device_id=0)
    assert plan(LABEL, [0, 1], 4, 1024, base, []).instances == (base,)
    cpu = RuntimeOptions(device="cpu")
    placed = plan(LABEL, None, 1, None, cpu, TWO_GPUS)
    assert placed.instances == (cpu,)
    assert placed.budgets == {}


def test_instances_are_spread_over_the_devices_with_their_ids_and_budget() -> None:
    placed = plan(LABEL, [1, 0], 2, 3000, RuntimeOptions(device="cuda"), TWO_GPUS)
    assert [o.gpu_device_id for o in placed.instances] == [1, 0, 1, 0]
    assert {o.gpu_memory_bytes for o in placed.instances} == {3000 * MIB}
    assert {o.instances_per_device for o in placed.instances} == {2}
    assert {o.model_devices for o in placed.instances} == {(1, 0)}
    assert {o.device for o in placed.instances} == {"cuda"}
    assert placed.budgets == {1: 3000 * MIB, 0: 3000 * MIB}


def test_without_devices_the_model_goes_to_the_servers_gpu_and_without_a_budget_holds_none() -> None:
    placed = plan(LABEL, None, 1, None, RuntimeOptions(gpu_device_id=1), TWO_GPUS)
    assert [(o.gpu_device_id, o.gpu_memory_bytes) for o in placed.instances] == [(1, 0)]
    assert placed.budgets == {}


def test_an_unknown_device_is_refused_naming_the_model_and_the_device() -> None:
    with pytest.raises(ModelLoadError) as info:
        plan(LABEL, [0, 3], 1, None, RuntimeOptions(), TWO_GPUS)
    assert info.value.message == (
        "model 'cnn' version 1 is placed on cuda:3, which does not exist (this host has cuda:0, cuda:1)"
    )
    with pytest.raises(ModelLoadError, match=r"cuda:2, which does not exist"):
        plan(LABEL, None, 1, None, RuntimeOptions(gpu_device_id=2), TWO_GPUS)


def test_devices_that_require_a_gpu_on_a_host_without_one_are_refused_naming_them() -> None:
    base = RuntimeOptions(device="cuda", allow_cpu_fallback=False)
    with pytest.raises(ModelLoadError, match=r"^model 'cnn' version 1 is placed on cuda:0, cuda:1, but no GPU"):
        plan(LABEL, [0, 1], 1, None, base, [])


def test_a_budget_larger_than_the_device_is_refused_with_both_sizes() -> None:
    with pytest.raises(ModelLoadError) as info:
        plan(LABEL, [0], 1, 200_000, RuntimeOptions(), TWO_GPUS)
    assert info.value.message == "model 'cnn' version 1 asks for 200000 MiB on cuda:0, which has 143360 MiB in all"


# ----- the budget ledger ---------------------------------------------------------------------------------


def test_budgets_add_up_per_device_and_release_once() -> None:
    changes: list[tuple[int, int]] = []
    ledger = DeviceLedger(lambda index, held: changes.append((index, held)))
    release_a = ledger.reserve("model 'a' version 1", {0: 60 * GIB, 1: 10 * GIB}, TWO_GPUS)
    release_b = ledger.reserve("model 'b' version 1", {0: 70 * GIB}, TWO_GPUS)
    assert ledger.held() == {0: 130 * GIB, 1: 10 * GIB}
    release_a()
    release_a()  # a second release changes nothing
    assert ledger.held() == {0: 70 * GIB, 1: 0}
    release_b()
    assert ledger.held() == {0: 0, 1: 0}
    assert changes == [(0, 60 * GIB), (1, 10 * GIB), (0, 130 * GIB), (0, 70 * GIB), (1, 0), (0, 0)]


def test_a_budget_that_does_not_fit_beside_the_loaded_ones_is_refused_and_holds_nothing() -> None:
    ledger = DeviceLedger()
    ledger.reserve("model 'a' version 1", {0: 100 * GIB}, TWO_GPUS)
    with pytest.raises(ModelLoadError) as info:
        ledger.reserve(LABEL, {1: 1 * GIB, 0: 50 * GIB}, TWO_GPUS)
    assert info.value.message == (
        "model 'cnn' version 1 does not fit on cuda:0: it asks for 51200 MiB and 40960 MiB are available "
        "(143360 MiB in all, 102400 MiB budgeted to loaded models, 142336 MiB free)"
    )
    assert ledger.held() == {0: 100 * GIB}  # all or nothing: cuda:1 was not taken either


def test_a_budget_larger_than_what_the_device_has_free_is_refused() -> None:
    busy = [Gpu(0, "H200", 140 * GIB, 8 * GIB)]  # another process holds the rest
    with pytest.raises(ModelLoadError, match=r"asks for 10240 MiB and 8192 MiB are available .* 8192 MiB free"):
        DeviceLedger().reserve(LABEL, {0: 10 * GIB}, busy)


# ----- what ONNX Runtime and TensorFlow are handed ------------------------------------------------------


def test_onnx_runtime_gets_the_device_id_and_no_limit_without_a_budget() -> None:
    options = RuntimeOptions(device="cuda", gpu_device_id=1)
    assert cuda_provider_options(options) == {"device_id": 1}
    assert session_providers(options, want_cuda=True) == [
        ("CUDAExecutionProvider", {"device_id": 1}),
        "CPUExecutionProvider",
    ]
    assert session_providers(options, want_cuda=False) == ["CPUExecutionProvider"]


def test_each_onnx_session_gets_its_share_of_the_budget_as_its_arena_limit() -> None:
    placed = plan(LABEL, [0, 1], 3, 1000, RuntimeOptions(device="cuda"), TWO_GPUS)
    handed = [cuda_provider_options(o) for o in placed.instances]
    share = 1000 * MIB // 3
    assert handed == [
        {"device_id": index, "gpu_mem_limit": share, "arena_extend_strategy": "kSameAsRequested"}
        for index in (0, 1, 0, 1, 0, 1)
    ]
    assert sum(int(h["gpu_mem_limit"]) for h in handed if h["device_id"] == 0) <= 1000 * MIB


def test_tensorflow_limits_the_first_savedmodels_gpus_to_its_budget_and_grows_the_rest() -> None:
    placed = plan(LABEL, [1], 2, 4096, RuntimeOptions(), [*TWO_GPUS, Gpu(2, "H200", 140 * GIB, 140 * GIB)])
    assert memory_plan(3, placed.instances[0]) == {0: None, 1: 4096, 2: None}
    assert memory_plan(2, RuntimeOptions()) == {0: None, 1: None}
