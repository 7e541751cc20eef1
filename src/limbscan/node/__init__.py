"""limbscan as a DICOM node: receive radiographs over DICOM, score them, send the SR and SC back.

::

    modality / PACS --C-STORE--> StorageSCP --> received/<uid>.dcm --> queue --> Scorer (one Predictor)
                                  (answers once stored)                              |
                                                   scored/, predictions.jsonl, worklist.csv, dicom/, overlays/
                                                                                     |
    PACS <--C-STORE / STOW-RS-- Forwarder (per destination, back-off) <-- outbox/<dest>/

- :mod:`limbscan.node.scp`: the pynetdicom AE, its accepted SOP classes and transfer syntaxes,
  the C-STORE / C-ECHO handlers and the calling-AE check;
- :mod:`limbscan.node.spool`: the folder on disk, every file atomic, so a kill loses nothing;
- :mod:`limbscan.node.worker`: scoring, overlays, SR / SC with UIDs derived from the source;
- :mod:`limbscan.node.forward`: C-STORE SCU and STOW-RS senders with exponential back-off;
- :mod:`limbscan.node.node`: :class:`Node`, all of them started and stopped together.
"""

from limbscan.node.forward import Destination, parse_forward, parse_stow
from limbscan.node.node import Node, NodeConfig

__all__ = ["Destination", "Node", "NodeConfig", "parse_forward", "parse_stow"]
