"""Integrator mapping files: HL7 ORM^O01 → Modality Worklist items, as data.

``schema`` holds the validated shape, ``load`` reads YAML (with inheritance and errors
naming file, line and key), ``transforms`` the value conversions, ``apply`` runs a
mapping over a parsed message. The ``mwl-bridge mapping`` verbs are
:mod:`bridge.ops.mapping_commands`.
"""
