"""Self-supervised SimCLR pretraining of a model's encoder on a study's unlabelled patches.

SimCLR (Chen et al. 2020): two random views of each patch (:class:`SimCLRViews`) go through the
encoder, global average pooling and a 2-layer projection MLP; the NT-Xent loss
(:func:`nt_xent_loss`) pulls the two views of a patch together and pushes the other patches of
the batch away. :func:`pretrain` runs it for ``train.model`` and writes a weight file that
``train.model.pretrained_path`` loads (the projection MLP is dropped).
"""

from geofuse.training.ssl.loss import nt_xent_loss
from geofuse.training.ssl.model import SimCLRModel, build_encoder
from geofuse.training.ssl.pretrain import PretrainResult, default_output, pretrain
from geofuse.training.ssl.views import SimCLRViews

__all__ = [
    "PretrainResult", "SimCLRModel", "SimCLRViews", "build_encoder", "default_output",
    "nt_xent_loss", "pretrain",
]
