"""limbscan as a DICOM node: receive radiographs over DICOM, score them, send the SR and SC back.

:mod:`.scp` (the pynetdicom AE: C-STORE, C-ECHO, the calling-AE check), :mod:`.spool` (the
folder on disk, every file atomic), :mod:`.worker` (scoring, overlays, SR / SC with UIDs derived
from the source), :mod:`.forward` (C-STORE and STOW-RS senders with back-off) and :mod:`.node`
(:class:`Node`, all of them started and stopped together). docs/dicom-node.md draws the flow.
"""

from limbscan.node.forward import Destination, parse_forward, parse_stow
from limbscan.node.node import Node, NodeConfig

__all__ = ["Destination", "Node", "NodeConfig", "parse_forward", "parse_stow"]
