"""The MAG-SD method beside the network: attention-guided views, the soft distance loss, the training objective."""
