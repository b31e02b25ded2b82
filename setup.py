"""Packaging for dxf.py: one stdlib-only module and its ``dxf`` command."""
import io
import os
import re

from setuptools import setup

HERE = os.path.dirname(os.path.abspath(__file__))


def read(name):
    with io.open(os.path.join(HERE, name), encoding='utf-8') as f:
        return f.read()


# Read the version with a regex rather than importing dxf at build time.
VERSION = re.search(r"^__version__ = '([^']+)'", read('dxf.py'), re.M).group(1)

setup(
    name='dxf-registry',   # 'dxf' on PyPI is an unrelated CAD library
    version=VERSION,
    description='Store blobs in a Docker/OCI registry: a module and a command-line tool',
    long_description=read('README.md'),
    long_description_content_type='text/markdown',
    license='MIT',
    py_modules=['dxf'],
    entry_points={'console_scripts': ['dxf = dxf:main']},
    python_requires='>=3.6',
    classifiers=[
        'Operating System :: OS Independent',
        'Programming Language :: Python :: 3',
        'Programming Language :: Python :: 3 :: Only',
        'Programming Language :: Python :: 3.6',
        'Programming Language :: Python :: 3.7',
        'Programming Language :: Python :: 3.8',
        'Programming Language :: Python :: 3.9',
        'Programming Language :: Python :: 3.10',
        'Programming Language :: Python :: 3.11',
        'Programming Language :: Python :: 3.12',
        'Programming Language :: Python :: 3.13',
        'Topic :: System :: Archiving',
    ],
)
