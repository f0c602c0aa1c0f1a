"""mwl-bridge: HL7 v2 ORM^O01 orders over MLLP to a DICOM Modality Worklist SCP.

Data flows one way: ``framing``/``listener`` (MLLP bytes, ACK) → ``intake`` (durable
Redis write + rq job) → ``jobs``/``hl7in``/``mapping`` (parse, map, lifecycle) →
``store`` (indexed worklist items) → ``matching``/``handlers``/``scp`` (C-FIND).
"""

__version__ = "0.1.0"
