"""CT-RATE-style English report text (findings, impressions, clinical information, technique) from planted findings.

Every present class is stated with one of its KEYWORDS in an affirmative sentence, and each class's prompt name
("lung opacity", "pleural effusion") is among the affirmative wordings it is drawn from. Most absent classes
(NEGATED) are stated absent as CT-RATE reports state them, in several forms and in the class's own words, the
prompts' names among them ("Pleural effusion-thickening was not detected.", "No enlarged lymph nodes ... were
detected.", "The lungs are well aerated and not atelectatic.", "No pulmonary fibrotic sequela was detected."); the
rest go unmentioned or are described as normal without their keywords. No report holds a zero-shot prompt sentence
("The volume shows: Not X."). Affirmative sentences never contain the words "no", "not" or "without", so a
sentence-level negation check is exact: a class is present iff a sentence free of negation words names one of its
keywords.
"""

from __future__ import annotations

import numpy as np

from reaf.synthetic.phantom import Finding

KEYWORDS: dict[str, tuple[str, ...]] = {
    "Medical material": ("pacemaker", "sternotomy wires", "port catheter"),
    "Arterial wall calcification": ("atherosclerotic calcification", "aortic wall calcification", "arterial wall"),
    "Cardiomegaly": ("cardiomegaly",),
    "Pericardial effusion": ("pericardial effusion",),
    "Coronary artery wall calcification": ("coronary",),
    "Hiatal hernia": ("hiatal hernia",),
    "Lymphadenopathy": ("lymphadenopathy", "lymph node"),
    "Emphysema": ("emphysema",),
    "Atelectasis": ("atelectasis",),
    "Lung nodule": ("nodule",),
    "Lung opacity": ("opacity", "opacities"),
    "Pulmonary fibrotic sequela": ("fibrotic",),
    "Pleural effusion": ("pleural effusion",),
    "Mosaic attenuation pattern": ("mosaic attenuation",),
    "Peribronchial thickening": ("peribronchial",),
    "Consolidation": ("consolidation",),
    "Bronchiectasis": ("bronchiectasis",),
    "Interlobular septal thickening": ("septal thickening",),
}
POSITIVE: dict[str, list[str]] = {
    "Medical material": [
        "{Kind} (medical material) in the {wall}.",
        "Medical material consistent with {kind} is present in the {wall}.",
        "The scanned volume shows medical material: {kind} in the {wall}.",
    ],
    "Arterial wall calcification": [
        "{Size} atherosclerotic calcification is observed in the wall of the thoracic aorta.",
        "Aortic wall calcification ({size}) is present in the thoracic aorta.",
        "{Size} arterial wall calcification is seen in the thoracic aorta.",
    ],
    "Cardiomegaly": ["The heart is enlarged ({size} cardiomegaly).", "Cardiomegaly is observed, {size} in degree.",
                     "The heart shows {size} cardiomegaly."],
    "Pericardial effusion": [
        "Pericardial effusion reaching {mm} mm in thickness is observed.",
        "A {size} pericardial effusion surrounds the heart.",
    ],
    "Coronary artery wall calcification": [
        "{Size} calcified plaques are observed in the {artery} coronary artery.",
        "Coronary artery calcification is seen ({size} plaques), most evident in the {artery} artery.",
        "Coronary artery wall calcification is observed in the {artery} artery.",
    ],
    "Hiatal hernia": ["A {size} hiatal hernia is observed at the esophageal hiatus.", "{Size} hiatal hernia.",
                      "The esophagus shows a {size} hiatal hernia."],
    "Lymphadenopathy": [
        "Lymphadenopathy is observed in the {stations}, the largest lymph node measuring {mm} mm.",
        "Enlarged lymph nodes of pathological size are seen in the {stations}, up to {mm} mm.",
        "The mediastinum shows lymphadenopathy in the {stations}, up to {mm} mm.",
    ],
    "Emphysema": [
        "{Type} emphysema is observed in {where}.",
        "{Size} {type} emphysematous areas (emphysema) in {where}.",
        "The lung shows {type} emphysema in {where}.",
    ],
    "Atelectasis": ["{Type} atelectasis is observed in {where}.", "Atelectasis ({type}) is seen in {where}.",
                    "The lung shows {type} atelectatic change (atelectasis) in {where}."],
    "Lung nodule": [
        "{Nodules} measuring {up_to}{mm} mm {are} observed in {where}.",
        "{Nodules} of {mm} mm in largest diameter {are} seen in {where}.",
        "{Lung_nodules} of {mm} mm in largest diameter {are} seen in {where}.",
    ],
    "Lung opacity": [
        "Ground-glass opacity is observed in {where}.",
        "Patchy ground-glass opacities are seen in {where}.",
        "Patchy ground-glass opacities are seen in {where}.",
        "The lung shows opacity (ground-glass) in {where}.",
        "Lung opacity (ground-glass) is observed in {where}.",
    ],
    "Pulmonary fibrotic sequela": [
        "Fibrotic sequelae are observed in {where}.",
        "Parenchymal fibrotic bands are seen in {where}.",
        "Pulmonary fibrotic sequelae are seen in {where}.",
    ],
    "Pleural effusion": [
        "{Side} pleural effusion, {size} in amount, reaching {mm} mm in thickness.",
        "A {size} {side_lower} pleural effusion is observed.",
    ],
    "Mosaic attenuation pattern": [
        "Mosaic attenuation pattern is observed in {where}.",
        "Areas of mosaic attenuation are seen in {where}.",
        "The lung parenchyma shows mosaic attenuation in {where}.",
    ],
    "Peribronchial thickening": [
        "Peribronchial thickening is observed in {where}.",
        "Bronchial walls are thickened in {where} (peribronchial thickening).",
    ],
    "Consolidation": [
        "Consolidation with air bronchograms is observed in {where}.",
        "An area of consolidation is seen in {where}.",
        "An area of consolidation is seen in {where}.",
        "The lung shows consolidation in {where}.",
    ],
    "Bronchiectasis": ["{Type} bronchiectasis is observed in {where}.", "Bronchiectasis ({type}) is seen in {where}.",
                       "The lung shows {type} bronchiectasis in {where}."],
    "Interlobular septal thickening": [
        "Interlobular septal thickening is observed in {where}.",
        "Smooth interlobular septal thickening is seen in {where}.",
    ],
}
# Each class's own names (those of the prompts among them), the organ a report would name, and its own negations
# in CT-RATE's forms ("Pleural effusion-thickening was not detected.", "No enlarged lymph nodes ... were detected.").
NAMES: dict[str, tuple[str, str]] = {  # class -> (noun phrase, where a report places it)
    "Medical material": ("medical material", "the scanned volume"),
    "Arterial wall calcification": ("arterial wall calcification", "the thoracic aorta"),
    "Cardiomegaly": ("cardiomegaly", "the heart"),
    "Pericardial effusion": ("pericardial effusion", "the pericardium"),
    "Coronary artery wall calcification": ("coronary artery wall calcification", "the coronary arteries"),
    "Hiatal hernia": ("hiatal hernia", "the esophagus"),
    "Lymphadenopathy": ("lymphadenopathy", "the mediastinum"),
    "Emphysema": ("emphysema", "either lung"),
    "Atelectasis": ("atelectasis", "either lung"),
    "Lung nodule": ("lung nodule", "either lung"),
    "Lung opacity": ("lung opacity", "either lung"),
    "Pulmonary fibrotic sequela": ("pulmonary fibrotic sequela", "either lung"),
    "Pleural effusion": ("pleural effusion", "the pleural spaces"),
    "Mosaic attenuation pattern": ("mosaic attenuation pattern", "the lung parenchyma"),
    "Peribronchial thickening": ("peribronchial thickening", "either lung"),
    "Consolidation": ("consolidation", "either lung"),
    "Bronchiectasis": ("bronchiectasis", "either lung"),
    "Interlobular septal thickening": ("interlobular septal thickening", "the lung parenchyma"),
}
GENERIC_NEGATIVE = ["No {name} was detected.", "{Name} was not detected.", "{Name} was not observed in {where}.",
                    "No {name} was observed in {where}.", "There is no evidence of {name}."]  # fmt: skip
NEGATIVE: dict[str, list[str]] = {
    "Medical material": ["No pacemaker, port catheter or sternotomy wires were observed.",
                         "The scanned volume shows no medical material or foreign body."],
    "Arterial wall calcification": ["No atherosclerotic calcification was observed in the thoracic aorta.",
                                    "The aortic wall shows no calcification."],
    "Cardiomegaly": ["Heart contour and size are normal.", "The heart is not enlarged."],
    "Pericardial effusion": ["Pericardial effusion-thickening was not observed.",
                             "No pericardial effusion or thickening was seen."],
    "Coronary artery wall calcification": ["No calcification was detected in the coronary arteries.",
                                           "The coronary artery walls show no calcified plaque."],
    "Hiatal hernia": ["Esophagus calibration is normal.", "No hiatal hernia was detected at the esophageal hiatus."],
    "Lymphadenopathy": [
        "No enlarged lymph nodes in pathological size and appearance were detected in the mediastinum or hila.",
        "The mediastinum shows no lymphadenopathy."],
    "Emphysema": ["No emphysematous areas were observed in the lung parenchyma.", "The lungs show no emphysema."],
    "Atelectasis": ["The lungs are well aerated and not atelectatic.", "No atelectatic change was observed."],
    "Lung nodule": ["No mass or nodule was detected in both lungs.", "No pulmonary nodule was observed."],
    "Lung opacity": ["No ground-glass opacity was observed.", "No opacity was detected in the lung parenchyma."],
    "Pulmonary fibrotic sequela": ["No fibrotic sequelae were observed in the lungs.",
                                   "No pulmonary fibrotic changes were detected."],
    "Pleural effusion": ["Pleural effusion-thickening was not detected.",
                         "No pleural effusion or pneumothorax was detected."],
    "Mosaic attenuation pattern": ["No mosaic attenuation was observed in the lung parenchyma.",
                                   "The lung parenchyma shows no mosaic attenuation."],
    "Peribronchial thickening": ["Bronchial walls are not thickened.", "No peribronchial thickening was observed."],
    "Consolidation": ["No consolidation was observed in either lung.", "There is no pulmonary consolidation."],
    "Bronchiectasis": ["No bronchiectasis was observed.", "The bronchi are not dilated; no bronchiectasis."],
    "Interlobular septal thickening": ["No interlobular septal thickening was observed.",
                                       "Interlobular septa are not thickened."],
}  # fmt: skip
NEGATED = 0.8  # the share of absent classes a report states as absent (CT-RATE reports state most of them)
IMPRESSION: dict[str, str] = {
    "Medical material": "{Kind}", "Arterial wall calcification": "Atherosclerotic calcification of the aorta",
    "Cardiomegaly": "Cardiomegaly", "Pericardial effusion": "Pericardial effusion",
    "Coronary artery wall calcification": "Coronary artery calcification", "Hiatal hernia": "Hiatal hernia",
    "Lymphadenopathy": "Mediastinal lymphadenopathy", "Emphysema": "{Side} emphysema",
    "Atelectasis": "{Side} atelectasis", "Lung nodule": "{Side} lung nodule of {mm} mm",
    "Lung opacity": "{Side} ground-glass lung opacity", "Pulmonary fibrotic sequela": "{Side} fibrotic sequelae",
    "Pleural effusion": "{Side} pleural effusion", "Mosaic attenuation pattern": "Mosaic attenuation pattern",
    "Peribronchial thickening": "Peribronchial thickening", "Consolidation": "{Side} consolidation",
    "Bronchiectasis": "{Side} bronchiectasis", "Interlobular septal thickening": "Interlobular septal thickening",
}  # fmt: skip
ORDER = [1, 2, 3, 4, 6, 5, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 12, 0]  # trachea/heart/mediastinum, lungs, pleura
AIRWAYS = ["Trachea and both main bronchi are in normal position and their lumens are patent.",
           "The trachea and main bronchi are open and of normal calibre."]  # fmt: skip
TAIL = ["Upper abdominal organs included in the sections are unremarkable.",
        "Bone structures in the study area are natural.", "Thyroid gland sizes are normal."]  # fmt: skip
CLINICAL = ["Cough.", "Shortness of breath.", "Chest pain.", "Fever and cough for one week.", "Dyspnoea.",
            "Follow-up examination.", "Preoperative evaluation.", "Not given."]  # fmt: skip


def _where(f: Finding) -> str:
    """Lung location phrase from side and lobe, e.g. 'the lower lobe of the right lung', 'both lungs'."""
    lungs = {"right": "the right lung", "left": "the left lung"}.get(f.side or "", "both lungs")
    if f.lobe is None:
        return lungs
    if f.lobe == "middle":
        middle = {"right": "the middle lobe of the right lung", "left": "the lingula of the left lung"}
        return middle.get(f.side or "", "the middle lobe and the lingula")
    return f"the {f.lobe} {'lobes' if f.side == 'bilateral' else 'lobe'} of {lungs}"


def _fields(f: Finding) -> dict[str, str]:
    d = {k: str(v) for k, v in f.detail.items()}
    if "stations" in f.detail:
        names = list(f.detail["stations"])
        d["stations"] = (
            (", ".join(names[:-1]) + " and " + names[-1] + " regions") if len(names) > 1 else names[0] + " region"
        )
    side = {"right": "Right", "left": "Left", "bilateral": "Bilateral"}.get(f.side or "", "")
    d.update(where=_where(f), size=f.size or "small", side=side, side_lower=side.lower())
    many = int(f.detail.get("count", 1)) > 1
    d.update(nodules="nodules" if many else "a nodule", are="are" if many else "is", up_to="up to " if many else "")
    d["lung_nodules"] = "lung nodules" if many else "a lung nodule"
    d["wall"] = {"pacemaker": "left anterior chest wall", "port catheter": "right anterior chest wall"}.get(
        d.get("kind", ""), "sternum")  # fmt: skip
    d.update({k[0].upper() + k[1:]: v[:1].upper() + v[1:] for k, v in list(d.items()) if v})
    return d


def _sentence(template: str, fields: dict[str, str]) -> str:
    text = " ".join(template.format(**fields).split())
    return text[0].upper() + text[1:]


def _negation(name: str, rng: np.random.Generator) -> str:
    """One CT-RATE-style statement that class `name` is absent: its own sentences or a generic form with its name."""
    own = NEGATIVE[name]
    if rng.random() < len(own) / (len(own) + len(GENERIC_NEGATIVE)):
        return str(rng.choice(own))
    noun, where = NAMES[name]
    return _sentence(str(rng.choice(GENERIC_NEGATIVE)), {"name": noun, "Name": noun.capitalize(), "where": where})


def write_report(findings: list[Finding], rng: np.random.Generator, thickness_mm: float) -> dict[str, str]:
    """The four CT-RATE report columns for one scan; Findings_EN states exactly ``findings`` (plus normal text)."""
    by_class = {f.cls: f for f in findings}
    names = list(KEYWORDS)
    sentences = [str(rng.choice(AIRWAYS))]
    for k in ORDER:
        name = names[k]
        if name in by_class:
            sentences.append(_sentence(str(rng.choice(POSITIVE[name])), _fields(by_class[name])))
        elif rng.random() < NEGATED:
            sentences.append(_negation(name, rng))
    sentences += [t for t in TAIL if rng.random() < 0.6]
    if by_class:
        impressions = [_sentence(IMPRESSION[n], _fields(by_class[n])) + "." for n in names if n in by_class]
    else:
        impressions = [str(rng.choice(["No significant pathology was detected in the thorax.",
                                       "Normal chest CT findings."]))]  # fmt: skip
    technique = (
        "Multislice scanning was performed from the thoracic inlet to the upper abdomen in the supine position "
        f"without intravenous contrast. Sections of {thickness_mm:g} mm thickness were examined in mediastinal and "
        "parenchymal windows."
    )
    return {
        "ClinicalInformation_EN": str(rng.choice(CLINICAL)),
        "Technique_EN": technique,
        "Findings_EN": " ".join(sentences),
        "Impressions_EN": " ".join(impressions),
    }
