"""The dataset's classes: names, label indices, the folder and file spellings, label helpers.

The one home of what a label means in lungkit. IQ-OTH/NCCD (Alyasriy & Al-Huseiny, 2020) has
three classes, numbered here as everywhere in lungkit:

    label  name        folder            file stem        also accepted
    0      Normal      "Normal cases"    "Normal case"
    1      Benign      "Bengin cases"    "Bengin case"    "bengin" (the dataset's own spelling)
    2      Malignant   "Malignant cases" "Malignant case"

Conditional models reserve one more index, `num_classes`, for "no label" (the unconditional
model that label dropout trains); helpers here accept names or indices and return int32.
TensorFlow-free (numpy only).
"""

import numpy as np

CLASS_NAMES = ("Normal", "Benign", "Malignant")  # labels 0, 1, 2
NUM_CLASSES = len(CLASS_NAMES)
# Lower-case spellings that mean a class name; "bengin" is IQ-OTH/NCCD's misspelling.
LABEL_ALIASES = {"bengin": "benign"}
# Class folder names per label, lower case, as the loader matches them.
CLASS_FOLDERS = {0: ("normal cases",), 1: ("bengin cases", "benign cases"), 2: ("malignant cases",)}
# The top folder of the Kaggle copy, which the phantom set imitates.
DATASET_FOLDER = "The IQ-OTHNCCD lung cancer dataset"
# The spelling lungkit writes (the phantom set): label -> (folder, file stem), the dataset's own.
DATASET_SPELLING = {0: ("Normal cases", "Normal case"), 1: ("Bengin cases", "Bengin case"),
                    2: ("Malignant cases", "Malignant case")}


def _name_to_label(name):
    """Label of a class name, any case, "bengin" accepted, " cases"/" case" suffix ignored."""
    key = name.strip().lower().removesuffix(" cases").removesuffix(" case")
    key = LABEL_ALIASES.get(key, key)
    names = [class_name.lower() for class_name in CLASS_NAMES]
    return names.index(key) if key in names else None


def class_label(name_or_label, argument="label"):
    """Maps a class name ("benign", "Bengin", "Normal cases") or a label 0..2 to its label.

    Raises:
        ValueError: naming `argument` and the allowed names when it is neither.
    """
    if isinstance(name_or_label, (int, np.integer)) and not isinstance(name_or_label, bool):
        if 0 <= name_or_label < NUM_CLASSES:
            return int(name_or_label)
    elif isinstance(name_or_label, str):
        label = _name_to_label(name_or_label)
        if label is not None:
            return label
    raise ValueError(f"`{argument}` must be one of {CLASS_NAMES} (any case; 'bengin' accepted) "
                     f"or a label 0..{NUM_CLASSES - 1}. Received: {argument}={name_or_label!r}")


def resolve_labels(label, n, num_classes=NUM_CLASSES):
    """Turns `label` (an index, a class name, or a sequence of either) into int32 `(n,)`.

    Names are matched as in `class_label`; indices must lie in [0, num_classes).

    Raises:
        ValueError: for a sequence whose length is not `n`, or a bad name or index.
    """
    values = [label] * n if isinstance(label, (str, int, np.integer)) else list(label)
    if len(values) != n:
        raise ValueError(f"`label` must be one label or {n} labels. Received {len(values)} labels")
    resolved = []
    for value in values:
        if isinstance(value, str):
            value = class_label(value)
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) \
                or not 0 <= value < num_classes:
            raise ValueError(f"`label` must be an integer in [0, {num_classes - 1}] or a class "
                             f"name. Received: label={value!r}")
        resolved.append(int(value))
    return np.asarray(resolved, dtype=np.int32)


def check_labels(labels, n, num_classes=NUM_CLASSES, name="labels"):
    """Validates integer labels, one per image, in [0, num_classes); returns int64 `(n,)`."""
    labels = np.asarray(labels)
    if labels.size and not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"`{name}` must be integers. Received dtype {labels.dtype}")
    labels = labels.astype("int64").reshape(-1)
    if len(labels) != n:
        raise ValueError(f"`{name}` must hold one label per image ({n}). Received {len(labels)}")
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"`{name}` must lie in [0, {num_classes - 1}]. "
                         f"Received values in [{labels.min()}, {labels.max()}]")
    return labels


def balanced_labels(n, num_classes=NUM_CLASSES):
    """Labels for `n` class-conditional samples: the classes in turn, evenly, in order.

    Returns:
        int32 `(n,)`, sorted, each class `n // num_classes` or one more times.
    """
    return (np.arange(n) * num_classes // n).astype(np.int32)


def class_counts(labels, num_classes=NUM_CLASSES):
    """How many of `labels` fall in each class, a list of `num_classes` ints."""
    return np.bincount(np.asarray(labels, dtype="int64"), minlength=num_classes).tolist()


def labels_from_counts(counts):
    """The sorted labels that `class_counts` counted: `[2, 1] -> [0, 0, 1]`, int64."""
    return np.repeat(np.arange(len(counts)), counts)
