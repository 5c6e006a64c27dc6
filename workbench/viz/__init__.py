"""Pure renderers: data in, HTML strings or HoloViews objects out (no app state, no engine calls).

The same renderers feed the Panel app and the notebooks; nothing here loads front-end
code from a CDN.
"""
