"""The train job: DPO with TRL on DATA's pairs (data, trainer, losses, metrics, accelerate configs)."""
