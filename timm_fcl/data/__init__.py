"""The data of a training run: resumable streams split exactly across ranks and loader workers (``streams``, over
``partition``'s arithmetic), their sources (``sources``: shards read raw, torchvision sets, image folders), a shard
folder's ``_info.json`` checked against its tar headers (``shard_info``, ``tarindex``), timm's AugMix views
(``augmix``) and the one error type (``errors``); WebDataset shards written from folders and torchvision sets
(``shards``, ``python -m timm_fcl.shards``), a fixed validation split carved from training shards (``holdout``), and
the paper's synthetic MNIST (``synthetic_mnist``). Those last three are imported on use."""
from .augmix import AugMixViews
from .errors import DataError, MissingSplit
from .partition import seeded
from .shard_info import shard_dataset, shard_hint, wds_split
from .sources import MapSource, WdsSource, create_source
from .streams import EpochStream, make_loader

__all__ = ["AugMixViews", "DataError", "EpochStream", "MapSource", "MissingSplit", "WdsSource", "create_source",
           "make_loader", "seeded", "shard_dataset", "shard_hint", "wds_split"]
