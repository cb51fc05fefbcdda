"""LiteRT classifier over a bundle: numpy and ``ai_edge_litert`` only, never TensorFlow.

One interpreter is prepared per batch size (``resize_tensor_input`` + ``allocate_tensors`` re-initialises
XNNPACK, which is slow), and softmax runs in numpy because XNNPACK has no int8 SOFTMAX kernel.
``predict_bucketed`` runs any batch as power-of-two chunks (20 = 16 + 4), so a worker keeps a handful of
prepared interpreters and never spends compute on padding frames.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import numpy as np

from common.bundle import Bundle
from common.errors import BundleError


class Model(Protocol):
    """What a worker calls: ``Classifier`` (INT8, LiteRT) and ``workers.float_model.SavedModelClassifier``."""

    input_shape: tuple[int, ...]

    def predict_bucketed(self, batch: np.ndarray, max_bucket: int = 1024) -> np.ndarray: ...


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    out: np.ndarray = e / e.sum(axis=-1, keepdims=True)
    return out


def make_interpreter(model_path: Path, num_threads: int, content: bytes | None = None) -> Any:
    """An interpreter of the model at ``model_path``, or of its bytes ``content`` read from there before."""
    from ai_edge_litert.interpreter import Interpreter

    try:
        if content is not None:
            return Interpreter(model_content=content, num_threads=num_threads)
        return Interpreter(model_path=str(model_path), num_threads=num_threads)
    except (ValueError, RuntimeError) as exc:
        raise BundleError(f"{model_path} is not a loadable LiteRT model: {exc}") from exc


class Classifier:
    """Batch in (N, H, W, C) raw pixels of the bundle's input dtype, probabilities (N, classes) out."""

    def __init__(self, model_path: Path, num_threads: int = 1, outputs_logits: bool = True) -> None:
        self.model_path = Path(model_path)
        self.outputs_logits = outputs_logits
        self.num_threads = num_threads
        self._by_batch: dict[int, Any] = {}
        # Read once: an interpreter per batch size is made when that size first comes, and reading the file then
        # would fail a running worker whose bundle is being replaced (a deploy), stopping the whole pool.
        try:
            self._content = self.model_path.read_bytes()
        except OSError as exc:
            raise BundleError(f"{model_path} cannot be read: {exc}. Re-export the bundle.") from exc
        probe = make_interpreter(self.model_path, num_threads, self._content)
        self._in = probe.get_input_details()[0]
        self._out = probe.get_output_details()[0]
        self.input_shape = tuple(int(d) for d in self._in["shape"][1:])
        self.input_dtype = np.dtype(self._in["dtype"])
        self._out_scale, self._out_zero = self._out["quantization"]

    @classmethod
    def from_bundle(cls, bundle: Bundle, num_threads: int = 1) -> Classifier:
        clf = cls(bundle.tflite_path, num_threads, outputs_logits=bundle.spec.outputs == "logits")
        if clf.input_shape != bundle.spec.input.shape:
            raise BundleError(
                f"bundle {bundle.root}: model input {clf.input_shape} does not match spec {bundle.spec.input.shape}."
            )
        outputs = int(clf._out["shape"][-1])
        if outputs != len(bundle.labels):  # every result would index a label that is not there
            raise BundleError(f"bundle {bundle.root}: the model has {outputs} outputs but labels.txt lists "
                              f"{len(bundle.labels)} labels. Re-export it with the --data the model was trained on.")
        return clf

    def _interpreter(self, batch: int) -> Any:
        interp = self._by_batch.get(batch)
        if interp is None:
            interp = make_interpreter(self.model_path, self.num_threads, self._content)
            interp.resize_tensor_input(self._in["index"], [batch, *self.input_shape])
            interp.allocate_tensors()
            self._by_batch[batch] = interp
        return interp

    def logits(self, batch: np.ndarray) -> np.ndarray:
        if batch.ndim != 4 or tuple(batch.shape[1:]) != self.input_shape:
            raise ValueError(f"expected a batch of shape (N, {self.input_shape}), got {batch.shape}")
        interp = self._interpreter(batch.shape[0])
        interp.set_tensor(self._in["index"], np.ascontiguousarray(batch, dtype=self.input_dtype))
        interp.invoke()
        raw = interp.get_tensor(self._out["index"])
        if self._out_scale:
            return (raw.astype(np.float32) - self._out_zero) * self._out_scale
        return np.asarray(raw, dtype=np.float32)

    def predict_proba(self, batch: np.ndarray) -> np.ndarray:
        out = self.logits(batch)
        return softmax(out) if self.outputs_logits else out

    def predict_bucketed(self, batch: np.ndarray, max_bucket: int = 1024) -> np.ndarray:
        """``predict_proba`` for any N, as chunks of power-of-two sizes up to ``max_bucket``; no padding."""
        parts, start = [], 0
        while start < len(batch):
            left = len(batch) - start
            size = min(max_bucket, 1 << (left.bit_length() - 1))
            parts.append(self.predict_proba(batch[start:start + size]))
            start += size
        return np.concatenate(parts) if len(parts) != 1 else parts[0]
