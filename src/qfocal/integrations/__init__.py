"""Glue between qfocal's losses and other frameworks (torchvision, YOLOv5, Ultralytics); import the submodule you need."""
