"""Running stages as Ray jobs: the stage registry, `vbpe submit`, and rendering of cluster manifests."""
