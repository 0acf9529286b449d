"""Publishing timm-fcl training outputs to the Hugging Face Hub (``python -m hfhub.publish``)."""
