"""Integrations with the tools teams already version with: DVC data, MLflow runs and registry,
W&B (docs/integrations.md). Each imports its tool's own library only when the feature is used,
through `repro.interop.extras.require`, so repro without the extras never loads them."""
