"""This folder installs as the package `datagen._seeds` (pyproject's package-dir); read it with `datagen.resources`.

A regular package, not a namespace one: setuptools' editable finder cannot import a namespace
package mapped under `datagen`, and a wheel's would be a MultiplexedPath to `importlib.resources`."""
