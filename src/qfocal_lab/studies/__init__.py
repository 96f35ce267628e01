"""Studies of the losses inside the frameworks: :mod:`.balance`, the loss balance of YOLOv5 and Ultralytics."""
