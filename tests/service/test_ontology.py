from pydicom.sr import _concepts_dict

from service.ontology import DEFAULT_ONTOLOGY, Ontology


def _sct_meanings() -> dict[str, str]:
    out = {}
    for entries in _concepts_dict.concepts["SCT"].values():
        for value, (meaning, _cids) in entries.items():
            out[value] = meaning
    return out


def test_ontology_has_19_structures_and_5_findings_with_labels_1_to_19():
    assert [s.label for s in DEFAULT_ONTOLOGY.structures] == list(range(1, 20))
    assert len(DEFAULT_ONTOLOGY.findings) == 5
    assert DEFAULT_ONTOLOGY.num_classes == 20


def test_structure_codes_and_meanings_match_pydicom_codedict():
    meanings = _sct_meanings()
    for s in DEFAULT_ONTOLOGY.structures:
        assert meanings[s.code_value] == s.code_meaning, s.name


def test_caudal_to_cranial_order_alternates_disc_and_vertebra():
    names = [s.name for s in DEFAULT_ONTOLOGY.caudal_to_cranial()]
    assert names[:5] == ["Sacrum", "L5/S1 disc", "L5 vertebra", "L4/L5 disc", "L4 vertebra"]
    assert names[-1] == "T9 vertebra"
    assert len(names) == 19


def test_ontology_round_trips_through_model_card_dict():
    again = Ontology.from_dict(DEFAULT_ONTOLOGY.to_dict())
    assert again == DEFAULT_ONTOLOGY


def test_every_class_has_several_prompts_naming_it():
    for s in DEFAULT_ONTOLOGY.structures:
        assert len(s.prompt_texts()) >= 3 and all(s.name in p for p in s.prompt_texts())
    for f in DEFAULT_ONTOLOGY.findings:
        assert len(f.prompt_texts()) >= 3 and all(f.name in p for p in f.prompt_texts())


def test_colors_are_distinct():
    colors = [s.color for s in DEFAULT_ONTOLOGY.structures]
    assert len(set(colors)) == len(colors)
