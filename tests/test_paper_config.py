"""configs/alexnet_paper.yaml holds the paper's values: each written out here from the
paper (section and sentence quoted), never taken from the code's defaults, so that the
config and the defaults cannot drift together."""
from pathlib import Path

import pytest
import yaml

from repro.config import load_config

PAPER = Path(__file__).parent.parent / "configs" / "alexnet_paper.yaml"

# key -> (the paper's value, where the paper says it)
PAPER_VALUES = {
    "model.num_classes": (1000, "s2: 'roughly 1.2 million training images ... 1000 categories'"),
    "model.in_channels": (3, "s3.5: 'the first convolutional layer filters the 224x224x3 input'"),
    "model.groups": (2, "s3.2: 'the kernels of layer 3 take input from all kernel maps in layer 2; "
                        "kernels in layer 4 take input only from ... the same GPU'"),
    "model.half_kernels": (False, "s3.2: the half-kernel net is the comparison, not the model"),
    "model.lrn": ("paper", "s3.3: b = a / (k + alpha * sum a^2)^beta, alpha not divided by n"),
    "model.lrn_size": (5, "s3.3: 'k = 2, n = 5, alpha = 10^-4, and beta = 0.75'"),
    "model.lrn_alpha": (1e-4, "s3.3: 'alpha = 10^-4'"),
    "model.lrn_beta": (0.75, "s3.3: 'beta = 0.75'"),
    "model.lrn_k": (2.0, "s3.3: 'k = 2'"),
    "model.pool_kernel": (3, "s3.4: 's = 2 and z = 3'"),
    "model.pool_stride": (2, "s3.4: 's = 2 and z = 3'"),
    "model.dropout": (0.5, "s4.2: 'setting to zero the output of each hidden neuron with "
                           "probability 0.5'"),
    "model.init": ("paper", "s5: 'zero-mean Gaussian distribution with standard deviation 0.01'"),
    "model.weight_std": (0.01, "s5: 'standard deviation 0.01'"),
    "model.bias_one": (["conv2", "conv4", "conv5", "fc6", "fc7"],
                       "s5: 'neuron biases in the second, fourth, and fifth convolutional "
                       "layers, as well as in the fully-connected hidden layers, with the "
                       "constant 1'"),
    "model.bias_value": (1.0, "s5: 'with the constant 1'"),
    "model.activation": ("relu", "s3.1: 'Rectified Linear Units (ReLUs)'"),
    "model.removed_convs": ([], "s3.5: 'five convolutional and three fully-connected'"),
    "model.extra_conv6": (False, "s6: the sixth conv layer only in the starred rows"),
    "optim.name": ("paper_sgd", "s5: 'v_{i+1} := 0.9 v_i - 0.0005 eps w_i - eps <dL/dw>'"),
    "optim.lr": (0.01, "s5: 'The learning rate was initialized at 0.01'"),
    "optim.momentum": (0.9, "s5: 'momentum of 0.9'"),
    "optim.weight_decay": (5e-4, "s5: 'weight decay of 0.0005'"),
    "schedule.kind": ("plateau", "s5: 'divide the learning rate by 10 when the validation "
                                 "error rate stopped improving'"),
    "schedule.factor": (0.1, "s5: 'divide the learning rate by 10'"),
    "schedule.max_drops": (3, "s5: 'reduced three times prior to termination'"),
    "schedule.epochs": (90, "s5: 'roughly 90 cycles through the training set'"),
    "data.batch_size": (128, "s5: 'batch size of 128 examples'"),
    "data.crop_size": (227, "s4.1: '224x224 patches'; 227 makes conv1 exact (PAPER_NOTES)"),
    "augment.random_crop": (True, "s4.1: 'extracting random 224x224 patches'"),
    "augment.flip": (True, "s4.1: '(and their horizontal reflections)'"),
    "augment.pca_std": (0.1, "s4.1: 'Gaussian with mean zero and standard deviation 0.1'"),
    "augment.mean": ("image", "s2: 'subtracting the mean activity over the training set from "
                              "each pixel'"),
}


def flat(doc: dict) -> dict:
    return {f"{s}.{k}": v for s, body in doc.items() for k, v in body.items()}


@pytest.mark.parametrize("key", sorted(PAPER_VALUES))
def test_the_paper_config_holds_the_papers_value(key):
    expected, source = PAPER_VALUES[key]
    written = flat(yaml.safe_load(PAPER.read_text()))         # the file itself, as written
    loaded = flat(load_config(PAPER).to_dict())               # and as the trainer reads it
    assert written[key] == expected, f"{key}: {written[key]!r}, the paper: {expected!r} ({source})"
    assert loaded[key] == expected, f"{key}: {loaded[key]!r}, the paper: {expected!r} ({source})"


def test_every_model_optim_and_augment_key_is_pinned_or_named_as_a_choice():
    """A new key in the recipe's sections needs a paper value here, or a line saying it is
    a choice the paper does not make (PAPER_NOTES documents those)."""
    choices = {"model.conv1_padding", "model.seed", "optim.decay_biases", "augment.pca_scale",
               "schedule.patience", "schedule.threshold", "schedule.milestones"}
    keys = {k for k in flat(yaml.safe_load(PAPER.read_text()))
            if k.split(".")[0] in ("model", "optim", "augment", "schedule")}
    assert keys - set(PAPER_VALUES) == choices
