"""Channel configuration (channels.yaml) and the file formats for channel owners (README.md), shipped with the
package. This file only makes the folder package data; transforms.core.resources finds it."""
