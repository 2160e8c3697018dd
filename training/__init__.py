"""Offline side of NBO: the synthetic world, dataset building, training and evaluation."""
