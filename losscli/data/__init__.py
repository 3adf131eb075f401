"""Datasets: embedded files, generators and real loaders."""
