"""The musical clock: tempo, meter, transport and the bar grid, from the DAW or our own.

``source`` holds the contract every clock source keeps (a ``ClockReading``, the
``ClockSource`` protocol) and the registry ``serve --sync`` names them from.
"""
