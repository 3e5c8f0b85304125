"""The seed's Keras CNN, trained as a Nimbus job through the ``nr`` runtime API.

Conv2D(32, 3x3, relu) -> MaxPooling2D(2x2) -> Flatten -> Dense(128, relu) -> Dense(softmax),
on the job's image dataset. The model takes the raw uint8 images and scales them itself, so
the exported ONNX graph serves exactly what clients send. Resumable: ``nr.KerasCallback``
checkpoints every epoch and ``nr.keras_initial_epoch()`` skips the epochs already done::

    nimbus train --dataset digits --model examples/keras_cnn.py --param epochs=5

Locally, on a downloaded dataset (``nimbus datasets download digits:1 data/digits``)::

    NIMBUS_DATASET_DIR=data/digits NIMBUS_PARAMS='{"epochs": 2}' python examples/keras_cnn.py
"""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "torch")  # Nimbus runs Keras 3 on PyTorch

import keras
import numpy as np

from nimbus import runtime as nr


def build(shape: tuple[int, ...], classes: int) -> keras.Model:
    inputs = keras.Input(shape=shape, dtype="uint8")
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.Conv2D(32, (3, 3), activation="relu")(x)
    x = keras.layers.MaxPooling2D((2, 2))(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(128, activation="relu")(x)
    outputs = keras.layers.Dense(classes, activation="softmax")(x)
    return keras.Model(inputs, outputs)


def main() -> None:
    params = nr.params
    epochs = int(params.get("epochs", 5))
    keras.utils.set_random_seed(int(params.get("seed", 0)))
    data = nr.dataset()
    model = build(data.train.x.shape[1:], len(data.classes))
    model.compile(
        optimizer=keras.optimizers.Adam(float(params.get("lr", 1e-3))),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    validation = (np.array(data.val.x), np.array(data.val.y)) if len(data.val) else None
    model.fit(
        np.array(data.train.x),
        np.array(data.train.y),
        epochs=epochs,
        batch_size=int(params.get("batch_size", 64)),
        validation_data=validation,
        initial_epoch=nr.keras_initial_epoch(),
        callbacks=[nr.KerasCallback()],
        verbose=0,
    )
    if len(data.test):
        probabilities = model.predict(np.array(data.test.x), verbose=0)
        nr.evaluate(data.test.y, probabilities)
    nr.save_model(model, np.array(data.train.x[:8]))


if __name__ == "__main__":
    main()
