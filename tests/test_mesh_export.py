"""Meshes in PLY, OBJ and GLB (vq3d.export.write_mesh): each reloads with trimesh with the same
vertices, faces and vertex colours; and a scene's mesh takes its colours from the NeRF."""

import numpy as np
import pytest
import torch
import trimesh

from vq3d.export import MESH_FORMATS, scene_mesh, write_mesh


def _tetrahedra(n: int = 3):
    rng = np.random.default_rng(0)
    base = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], np.float32)
    vertices = np.concatenate([base + 2.0 * i for i in range(n)]) + rng.normal(0, 0.01, (4 * n, 3)).astype(np.float32)
    faces = np.concatenate([np.array([[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]]) + 4 * i for i in range(n)])
    colours = rng.integers(0, 256, (4 * n, 3), dtype=np.uint8)
    return vertices, faces, colours


@pytest.mark.parametrize("fmt", MESH_FORMATS)
def test_each_mesh_format_reloads_with_its_vertices_faces_and_colours(tmp_path, fmt):
    vertices, faces, colours = _tetrahedra()
    path = tmp_path / f"mesh.{fmt}"
    write_mesh(path, vertices, faces, colours)
    loaded = trimesh.load(path, process=False, force="mesh")
    assert loaded.vertices.shape == vertices.shape and loaded.faces.shape == faces.shape
    np.testing.assert_allclose(loaded.vertices, vertices, atol=1e-5)  # OBJ keeps 6 decimals
    np.testing.assert_array_equal(loaded.faces, faces)
    # OBJ stores colours as floats with 4 decimals: within one step of uint8
    got = np.asarray(loaded.visual.vertex_colors)[:, :3].astype(int)
    assert np.abs(got - colours.astype(int)).max() <= (1 if fmt == "obj" else 0)


def test_an_unknown_mesh_format_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="ply, obj, glb"):
        write_mesh(tmp_path / "mesh.stl", *_tetrahedra())


class _Ball(torch.nn.Module):
    """A scene stand-in: density 1 inside radius 0.5, colour a function of position."""

    def __init__(self):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(()))  # so the model has a device

    def density(self, scene, points):
        return (points.norm(dim=-1) < 0.5).float()

    def colour(self, scene, points):
        return (points + 1) / 2


def test_a_scene_mesh_takes_its_vertex_colours_from_the_field():
    vertices, faces, colours = scene_mesh(_Ball(), None, resolution=24, level=0.5)
    assert len(faces) > 0 and colours.shape == (len(vertices), 3) and colours.dtype == np.uint8
    radius = np.linalg.norm(vertices, axis=1)
    assert np.abs(radius - 0.5).max() < 2 / 23 + 1e-6  # on the sphere, within a grid cell
    expected = ((vertices + 1) / 2 * 255 + 0.5).astype(np.uint8)
    assert np.abs(colours.astype(int) - expected.astype(int)).max() <= 1
