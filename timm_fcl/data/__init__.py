"""The data of a training run: resumable streams split exactly across ranks and loader workers (``streams``),
WebDataset shards written from folders and torchvision sets (``shards``, ``python -m timm_fcl.shards``), a fixed
validation split carved from training shards (``holdout``), and the paper's synthetic MNIST (``synthetic_mnist``).
Only ``streams`` is imported here; the others on use."""
from .streams import (AugMixViews, DataError, EpochStream, MapSource, WdsSource, create_source, default_data_root,
                      make_loader, seeded, shard_dataset, shard_hint, wds_split)

__all__ = ["AugMixViews", "DataError", "EpochStream", "MapSource", "WdsSource", "create_source", "default_data_root",
           "make_loader", "seeded", "shard_dataset", "shard_hint",
           "wds_split"]
