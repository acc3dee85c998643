"""Running stages as Ray jobs: `vbpe submit`, and rendering of the cluster manifests in infra/."""
