"""The fields of the AMIF Fusion parameter node, as `slicer.parameterNodeWrapper` reads them.

`AMIFFusion.py` wraps a subclass of `AMIFFusionParameters` with `parameterNodeWrapper`; the class
lives here so that tests see the same annotations without Slicer's application. Contracts:

- every MRML class named in an annotation is concrete (Slicer's node combo box connector
  instantiates it: an abstract class such as vtkMRMLVolumeNode makes `connectGui` fail);
- several node classes are written `typing.Optional[typing.Union[...]]`, never `X | Y`
  (Slicer 5.8 runs Python 3.9, and its wrapper reads only `typing.Union`);
- `modelPath` is empty for the bundled model: an install path would break when a saved scene
  is opened in another Slicer version (extensions live in a folder named after its revision).
"""

import typing

from slicer import vtkMRMLScalarVolumeNode, vtkMRMLVectorVolumeNode

AnyVolume = typing.Optional[typing.Union[vtkMRMLScalarVolumeNode, vtkMRMLVectorVolumeNode]]


class AMIFFusionParameters:
    firstVolume: vtkMRMLScalarVolumeNode  # the grey volume (MRI); the output's grid
    secondVolume: AnyVolume  # CT, PET or SPECT, grey or colour
    outputVolume: AnyVolume  # None: a new volume is created on Apply
    keyPath: str = ""  # the key file; empty: no key (the output carries the identifier)
    modelPath: str = ""  # the model package manifest; empty: the bundled demo model
    useColorTable: bool = True  # fuse a scalar second volume in the colours of its colour table
