"""The paper's CIFAR-10 experiments (sections 3.1 and 3.3) with the author's own nets:
`data` reads the python batches, `nets` builds the cuda-convnet layer files' nets
(`local`: their locally connected layers), `train` trains one of them, `experiments`
runs Figure 1 and the LRN comparison (`python -m repro.cifar`)."""
