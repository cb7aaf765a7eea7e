"""Great Expectations suites of the quality gates (JSON), shipped with the package.
This file only makes the folder package data; transforms.core.resources finds it."""
