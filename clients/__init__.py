"""What applications import: Producer, Consumer, Admin, errors, and the wire
protocol shared with the broker.

Depends on ``storage`` only (for the record-batch format).
"""
