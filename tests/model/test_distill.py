"""Distillation: a student trained against a teacher's softened logits ends closer to the teacher than the same
student, from the same initial weights, trained on the labels alone."""

from pathlib import Path

import numpy as np
import pytest

from common.bundle import InputSpec
from model.data import Dataset, Split
from model.train import TrainConfig


@pytest.mark.slow
def test_distillation_lowers_the_students_loss_against_the_teacher(tmp_path: Path) -> None:
    import tf_keras as keras

    from model.architectures import camera_vgg
    from model.distill import distill, soft_loss
    from model.train import fit

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (256, 64, 64, 3), dtype=np.uint8)
    y = (x[:, :32].mean(axis=(1, 2, 3)) > x[:, 32:].mean(axis=(1, 2, 3))).astype(np.int64)  # top or bottom brighter
    spec = InputSpec(height=64, width=64, channels=3, color="rgb", resize="center_crop")
    data = Dataset("halves", ["top", "bottom"], Split(x, y), Split(x[:64], y[:64]), Split(x[:64], y[:64]), spec)
    cfg = TrainConfig(epochs=2, batch_size=32, augment=False, threads=1, early_stopping=False)
    keras.utils.set_random_seed(0)
    teacher = camera_vgg((64, 64, 3), 2, stages=[[16], [32]])
    fit(teacher, data, cfg, tmp_path / "teacher")
    students = {}
    for alpha in (0.9, 0.0):  # 0.0: the labels alone, through the same loop
        keras.utils.set_random_seed(1)  # the same initial weights for both
        student, hist = distill(camera_vgg((64, 64, 3), 2, stages=[[8], [8]]), teacher, data, cfg,
                                tmp_path / f"student-{alpha}", alpha=alpha)
        students[alpha] = soft_loss(student, teacher, x[:64], temperature=1.0)
    assert students[0.9] < students[0.0]
    assert set(hist) >= {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert student.input_shape == (None, 64, 64, 3) and int(student.get_layer("conv_0").strides[0]) == 2
