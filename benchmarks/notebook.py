"""The article's transfer notebook as one stand-alone script: what the Lab is compared with in P0.

    python benchmarks/notebook.py --data FOLDER --handle SAVEDMODEL --epochs 3 --output model.h5

It imports nothing from the Lab. The data are a folder of class sub-folders of JPEGs instead of TFDS's
cats_vs_dogs (offline), split 80/20 like the article's train[:80%] / train[80%:], decoded as TFDS decodes
(in parallel), then the article's pipeline: cache -> shuffle(n // 4) -> map(resize to 224, / 255) ->
batch(32) -> prefetch(1). The hub layer is frozen and every image goes through it in every epoch. The
model is saved to .h5 at the end and reloaded with custom_objects={"KerasLayer": hub.KerasLayer}, and both
predict one validation batch, as the article does (the Lab does the same after every run). Each phase
prints one line as it starts, so a parent process can time the phases from outside.
"""
import argparse
import random
import sys
from pathlib import Path

IMAGE_SIZE = 224
BATCH_SIZE = 32


def say(text: str) -> None:
    print(text, flush=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--handle", required=True)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args(argv)

    import tensorflow as tf
    import tensorflow_hub as hub
    import tf_keras

    say("Building the model")
    classes = sorted(p.name for p in args.data.iterdir() if p.is_dir())
    files = [(str(f), i) for i, c in enumerate(classes) for f in sorted((args.data / c).glob("*.jpg"))]
    random.Random(42).shuffle(files)
    cut = round(len(files) * 0.8)

    def split(items):
        paths, labels = zip(*items)
        ds = tf.data.Dataset.from_tensor_slices((list(paths), list(labels)))
        return ds.map(lambda p, y: (tf.io.decode_jpeg(tf.io.read_file(p), channels=3), y),
                      num_parallel_calls=tf.data.AUTOTUNE)

    def format_example(image, label):
        image = tf.cast(image, tf.float32)
        image = tf.image.resize(image, (IMAGE_SIZE, IMAGE_SIZE)) / 255.0
        return image, label

    train = split(files[:cut]).cache().shuffle(cut // 4).map(format_example).batch(BATCH_SIZE).prefetch(1)
    val = split(files[cut:]).cache().map(format_example).batch(BATCH_SIZE).prefetch(1)

    feature_extractor = hub.KerasLayer(args.handle, input_shape=(IMAGE_SIZE, IMAGE_SIZE, 3), trainable=False)
    model = tf_keras.Sequential([feature_extractor, tf_keras.layers.Dense(len(classes))])
    model.compile(optimizer="adam", loss=tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    say("Training")
    history = model.fit(train, epochs=args.epochs, validation_data=val, verbose=0)
    say(f"val_accuracy {history.history['val_accuracy'][-1]:.4f}")
    say("Saving")
    model.save(args.output)
    say("Reloading")  # the article's last step: reload the .h5 and compare predictions on a validation batch
    reloaded = tf_keras.models.load_model(args.output, custom_objects={"KerasLayer": hub.KerasLayer})
    images, _labels = next(iter(val))
    difference = abs(model.predict(images, verbose=0) - reloaded.predict(images, verbose=0)).max()
    say(f"max abs difference {difference}")
    say("Done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
