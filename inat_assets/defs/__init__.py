"""Declarations loaded by Dagster's component loader (``dg`` and inat_assets.definitions alike).

Add a dataset: ``dg scaffold defs inat_assets.components.InatDataset datasets/<name>`` and edit the
``defs.yaml`` it writes (see the README, "Datasets").
"""
