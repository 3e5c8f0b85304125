"""The seed's TensorFlow program (5.1) as a Nimbus job: ``import tensorflow as tf``, ``tf.keras``.

A Sequential CNN, Conv2D(32, 3x3, relu) -> MaxPooling2D(2x2) -> Flatten -> Dense(128, relu)
-> Dense(softmax), adam, sparse categorical cross-entropy, as the seed wrote it, plus the
``nr`` calls: the job's dataset, metrics and checkpoints each epoch through
``nr.KerasCallback`` (a later attempt resumes after the last epoch done), and
``nr.save_model``, which exports ONNX with tf2onnx and checks it against TensorFlow. One
addition: the model takes the raw uint8 images and scales them itself (``Rescaling``), so
the served model takes exactly what clients send. TensorFlow is not the platform's: the job
adds it with its requirements (``examples/tf_requirements.txt``)::

    nimbus train --dataset digits --model examples/tf_cnn.py \\
        --requirements examples/tf_requirements.txt --param epochs=5

Locally, with TensorFlow and tf2onnx installed, on a downloaded dataset
(``nimbus datasets download digits:1 data/digits``)::

    NIMBUS_DATASET_DIR=data/digits NIMBUS_PARAMS='{"epochs": 2}' python examples/tf_cnn.py
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from nimbus import runtime as nr


def build(shape: tuple[int, ...], classes: int) -> tf.keras.Model:
    return tf.keras.models.Sequential(
        [
            tf.keras.Input(shape=shape, dtype="uint8"),
            tf.keras.layers.Rescaling(1 / 255),
            tf.keras.layers.Conv2D(32, (3, 3), activation="relu"),
            tf.keras.layers.MaxPooling2D((2, 2)),
            tf.keras.layers.Flatten(),
            tf.keras.layers.Dense(128, activation="relu"),
            tf.keras.layers.Dense(classes, activation="softmax"),
        ]
    )


def main() -> tf.keras.Model:
    params = nr.params
    epochs = int(params.get("epochs", 5))
    tf.keras.utils.set_random_seed(int(params.get("seed", 0)))
    print("tensorflow", tf.__version__, "keras backend", tf.keras.backend.backend(), flush=True)
    data = nr.dataset()
    model = build(data.train.x.shape[1:], len(data.classes))
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
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
    return model


if __name__ == "__main__":
    main()
