"""gpt4all-lab's config tree, shipped inside the package as `gpt4all.conf` (read by Hydra as pkg://gpt4all.conf)."""
