"""service.inference: every check a request must pass before it is queued, and the outputs it gets back."""

from __future__ import annotations

import numpy as np
import pytest

from service.errors import BadRequestError, BatchTooLargeError
from service.inference import InferRequest, check_names, select, validate
from service.tensors import TensorSpec

SPECS = [TensorSpec("x", "FP32", (-1, 4)), TensorSpec("mask", "BOOL", (-1,))]
OUTPUTS = [TensorSpec("y", "FP32", (-1, 4)), TensorSpec("z", "INT64", (-1,))]
TEXT = [TensorSpec("s", "BYTES", (-1,), text=True)]


def request(outputs: tuple[str, ...] | None = None, **arrays: np.ndarray) -> InferRequest:
    return InferRequest("m", 1, dict(arrays), outputs)


def good(rows: int = 3, outputs: tuple[str, ...] | None = None) -> InferRequest:
    return request(outputs, x=np.zeros((rows, 4), np.float32), mask=np.ones(rows, bool))


def test_a_valid_request_gets_its_batch_rows() -> None:
    req = good(3)
    validate(req, SPECS, OUTPUTS, 64, "model 'm' version 1")
    assert req.rows == 3


def test_a_request_of_zero_rows_is_refused() -> None:
    with pytest.raises(BadRequestError, match="model 'm' version 1: the request has 0 rows"):
        validate(good(0), SPECS, OUTPUTS, 64, "model 'm' version 1")


def test_missing_and_unknown_inputs_are_both_named_with_the_expected_ones() -> None:
    with pytest.raises(BadRequestError, match=r"model 'm': missing input\(s\) \['mask'\]; expected \['x', 'mask'\]"):
        validate(request(x=np.zeros((1, 4), np.float32)), SPECS, OUTPUTS, 64, "model 'm'")
    extra = good(1)
    extra.inputs["z"] = np.ones(1, bool)
    with pytest.raises(BadRequestError, match=r"unknown input\(s\) \['z'\]"):
        validate(extra, SPECS, OUTPUTS, 64, "model 'm'")
    with pytest.raises(BadRequestError, match=r"instances\[2\]: missing .*\[.mask.\], unknown .*\[.q.\]"):
        check_names(["x", "q"], SPECS, "model 'm'", "instances[2]: ")
    check_names(["mask", "x"], SPECS, "model 'm'")


def test_another_datatype_is_refused_without_casting() -> None:
    req = request(x=np.zeros((1, 4), np.float64), mask=np.ones(1, bool))
    with pytest.raises(BadRequestError, match=r"input 'x' expects datatype FP32, got FP64"):
        validate(req, SPECS, OUTPUTS, 64, "model 'm'")


def test_wrong_rank_and_fixed_dims_are_refused() -> None:
    with pytest.raises(BadRequestError, match=r"input 'x' expects shape \[-1, 4\] \(rank 2\), got \[4\]"):
        validate(request(x=np.zeros(4, np.float32), mask=np.ones(1, bool)), SPECS, OUTPUTS, 64, "model 'm'")
    with pytest.raises(BadRequestError, match=r"input 'x' expects shape \[-1, 4\], got \[1, 3\]"):
        validate(request(x=np.zeros((1, 3), np.float32), mask=np.ones(1, bool)), SPECS, OUTPUTS, 64, "model 'm'")


def test_inputs_that_disagree_on_the_batch_are_refused() -> None:
    req = request(x=np.zeros((2, 4), np.float32), mask=np.ones(3, bool))
    with pytest.raises(BadRequestError, match=r"inputs disagree on batch size \(2 vs 3\)"):
        validate(req, SPECS, OUTPUTS, 64, "model 'm'")


def test_a_request_with_no_rows_is_refused() -> None:
    with pytest.raises(BadRequestError, match=r"the request has 0 rows"):
        validate(good(0), SPECS, OUTPUTS, 64, "model 'm'")


def test_more_rows_than_the_batch_limit_is_refused_only_where_the_model_batches() -> None:
    with pytest.raises(BatchTooLargeError, match=r"65 rows, more than max_batch_size 64"):
        validate(good(65), SPECS, OUTPUTS, 64, "model 'm'")
    unbatched = good(65)
    validate(unbatched, SPECS, OUTPUTS, 0, "model 'm'")
    assert unbatched.rows == 65


def test_bytes_for_a_text_input_must_be_utf8() -> None:
    ok = request(s=np.array([b"caf\xc3\xa9", b"plain"], dtype=object))
    validate(ok, TEXT, [], 64, "model 'm'")
    bad = request(s=np.array([b"ok", b"\xff\xfe"], dtype=object))
    with pytest.raises(BadRequestError, match=r"input 's': BYTES elements must be UTF-8 text"):
        validate(bad, TEXT, [], 64, "model 'm'")
    binary = [TensorSpec("s", "BYTES", (-1,))]  # a runtime that takes raw bytes
    validate(request(s=np.array([b"\xff"], dtype=object)), binary, [], 64, "model 'm'")


def test_requested_outputs_must_be_declared() -> None:
    with pytest.raises(BadRequestError, match=r"unknown output 'q'; the model has \['y', 'z'\]"):
        validate(good(1, ("y", "q")), SPECS, OUTPUTS, 64, "model 'm'")
    validate(good(1, ("z",)), SPECS, OUTPUTS, 64, "model 'm'")


def test_select_keeps_the_request_order_or_the_declared_order() -> None:
    produced = {"z": np.array([1]), "y": np.zeros((1, 4), np.float32)}
    assert list(select(produced, OUTPUTS, None)) == ["y", "z"]
    assert list(select(produced, OUTPUTS, ("z", "y"))) == ["z", "y"]
    assert list(select(produced, OUTPUTS, ("z",))) == ["z"]
