"""qfocal_lab: the training and evaluation harness beside the qfocal library.

It is what measures the losses: the embedded synthetic dataset and the COCO / YOLO readers (:mod:`.data`), a
small from-scratch FCOS (:mod:`.models`), training, COCO evaluation and the multi-seed compare with its statistics
(:mod:`.detection`), the loss benchmark (:mod:`.bench`) and the loss-balance study (:mod:`.studies`). Its commands
(``qfocal data / train / evaluate / compare / pretrain / demo / bench``) join the ``qfocal`` command through the
entry-point group ``qfocal.commands``. It needs the ``lab`` extra (``pip install "qfocal[lab]"``) and uses the
library's public API only; the library never imports it.
"""

__all__: list[str] = []
