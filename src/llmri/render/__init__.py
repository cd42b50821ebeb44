"""Frames as pictures, for exports and the viewer alike: the colour tables (``colormaps``), a
frame's tiles laid out as one grid (``grid``), and a session's exports to npz, PNG, GIF, MP4 and
JSON (``export``)."""
