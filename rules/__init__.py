"""Rule packs (data, not code): `<pack>.yaml` and dated versions `<pack>@YYYY-MM.yaml`, shipped with the package.
This file only makes the folder package data; transforms.core.resources finds it."""
