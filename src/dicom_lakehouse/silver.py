"""Pure transforms from bronze rows to typed silver rows (DataFrame -> DataFrame).

No IO here: :mod:`dicom_lakehouse.refine` reads the tables and merges the
results. Every parser is ANSI-safe (a malformed value becomes NULL, never an
error), on Spark 3.5 and 4.x alike: values are checked with a pattern before
they are cast.

Rules worth knowing:
- the current version of an instance is the file with the highest watermark
  among the files still listed in the lake (ties: the newest last-modified);
- study-level attributes that disagree across a study's instances are taken
  from the instance with the highest watermark, and counted in
  ``attribute_conflicts``;
- patient age is PatientAge (``nnnY/M/W/D``) in years, else the whole years
  between birth date and study date.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pyspark.sql import Column, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

__all__ = [
    "STUDY_ATTRIBUTES",
    "age_years",
    "current_instances",
    "parse_da",
    "parse_tm",
    "patients_from_studies",
    "pn_component",
    "series_from_instances",
    "studies_from_instances",
    "to_double",
    "typed_instances",
]

_NUMBER = r"^\s*[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?\s*$"
_INTEGER = r"^\s*[+-]?[0-9]{1,9}\s*$"

# Tags read from metadata_json (one parse per row): column -> JSON key path.
_SHARED_MEASURES = ("52009229", "00289110")  # Shared FG > Pixel Measures (enhanced objects)
_JSON_FIELDS: dict[str, tuple[str, ...]] = {
    "slice_thickness": ("00180050",),
    "pixel_spacing": ("00280030",),
    "shared_slice_thickness": (*_SHARED_MEASURES, "00180050"),
    "shared_pixel_spacing": (*_SHARED_MEASURES, "00280030"),
    "spacing_between_slices": ("00180088",),
    "kvp": ("00180060",),
    "slice_location": ("00201041",),
    "image_position_patient": ("00200032",),
    "image_orientation_patient": ("00200037",),
    "image_type": ("00080008",),
    "convolution_kernel": ("00181210",),
    "contrast_bolus_agent": ("00180010",),
    "protocol_name": ("00181030",),
    "institution_name": ("00080080",),
    "laterality": ("00200060",),
    "patient_weight": ("00101030",),
    "patient_size": ("00101020",),
    "acquisition_date": ("00080022",),
    "series_time": ("00080031",),
}

STUDY_ATTRIBUTES = (
    "study_date",
    "study_time",
    "study_description",
    "accession_number",
    "patient_id",
    "issuer_of_patient_id",
    "patient_name",
    "patient_sex",
    "patient_birth_date",
)
PATIENT_ATTRIBUTES = (
    "patient_name",
    "patient_family_name",
    "patient_given_name",
    "patient_sex",
    "patient_birth_date",
)


def _values_schema(path: tuple[str, ...]) -> T.StructType:
    """The from_json schema that reaches ``path``'s Value array (as strings)."""
    leaf = T.StructType([T.StructField("Value", T.ArrayType(T.StringType()))])
    for key in reversed(path[1:]):
        leaf = T.StructType(
            [T.StructField("Value", T.ArrayType(T.StructType([T.StructField(key, leaf)])))]
        )
    return T.StructType([T.StructField(path[0], leaf)])


def _merge_struct(a: T.StructType, b: T.StructType) -> T.StructType:
    fields = {f.name: f for f in a.fields}
    for f in b.fields:
        if f.name in fields and isinstance(f.dataType, T.StructType):
            old = fields[f.name].dataType
            assert isinstance(old, T.StructType)
            fields[f.name] = T.StructField(f.name, _merge_struct(old, f.dataType))
        elif f.name in fields and isinstance(f.dataType, T.ArrayType):
            old_el = fields[f.name].dataType.elementType  # type: ignore[attr-defined]
            new_el = f.dataType.elementType
            if isinstance(old_el, T.StructType) and isinstance(new_el, T.StructType):
                merged = T.ArrayType(_merge_struct(old_el, new_el))
                fields[f.name] = T.StructField(f.name, merged)
        else:
            fields[f.name] = f
    return T.StructType(list(fields.values()))


def _metadata_schema() -> T.StructType:
    schema = T.StructType([])
    for path in _JSON_FIELDS.values():
        schema = _merge_struct(schema, _values_schema(path))
    return schema


def _values_at(parsed: Column, path: tuple[str, ...]) -> Column:
    """The Value array (strings) at ``path`` below the parsed metadata struct."""
    node = parsed.getField(path[0])
    for key in path[1:]:
        node = node.getField("Value").getItem(0).getField(key)
    return node.getField("Value")


def to_double(text: Column) -> Column:
    """A DS/IS/FD text as DOUBLE, NULL when it is not a number."""
    return F.when(text.rlike(_NUMBER), F.trim(text).cast("double"))


def to_int(text: Column) -> Column:
    return F.when(text.rlike(_INTEGER), F.trim(text).cast("int"))


def parse_da(text: Column) -> Column:
    """A DICOM DA (``YYYYMMDD``) as DATE; NULL for malformed or impossible dates."""
    clean = F.trim(text)
    # try_to_timestamp: NULL for an impossible date (20231301, 20230229), ANSI or not
    parsed = F.to_date(
        F.try_to_timestamp(F.when(clean.rlike(r"^[0-9]{8}$"), clean), F.lit("yyyyMMdd"))
    )
    return F.when(F.year(parsed) >= 1800, parsed)


def parse_tm(text: Column) -> Column:
    """A DICOM TM (``HH[MM[SS[.F{1,6}]]]``, legacy ``HH:MM:SS``) as ``HH:MM:SS[.ffffff]``."""
    clean = F.regexp_replace(F.trim(text), ":", "")
    pattern = r"^([0-9]{2})([0-9]{2})?([0-9]{2})?(\.[0-9]{1,6})?$"
    hh = F.regexp_extract(clean, pattern, 1)
    mm = F.regexp_extract(clean, pattern, 2)
    ss = F.regexp_extract(clean, pattern, 3)
    frac = F.regexp_extract(clean, pattern, 4)
    mm = F.when(mm == "", F.lit("00")).otherwise(mm)
    ss = F.when(ss == "", F.lit("00")).otherwise(ss)

    def number(part: Column) -> Column:
        return F.when(part.rlike("^[0-9]{2}$"), part.cast("int"))

    valid = clean.rlike(pattern) & (number(hh) < 24) & (number(mm) < 60) & (number(ss) < 61)
    return F.when(valid, F.concat(hh, F.lit(":"), mm, F.lit(":"), ss, frac))


def age_years(patient_age: Column, birth_date: Column, study_date: Column) -> Column:
    """Age in years from PatientAge (nnnY/M/W/D), else birth date vs study date."""
    clean = F.upper(F.trim(patient_age))
    digits = F.regexp_extract(clean, r"^([0-9]{1,3})([YMWD])$", 1)
    number = F.when(digits != "", digits.cast("double"))
    unit = F.regexp_extract(clean, r"^([0-9]{1,3})([YMWD])$", 2)
    from_age = (
        F.when(unit == "Y", number)
        .when(unit == "M", number / 12)
        .when(unit == "W", number / 52.1775)
        .when(unit == "D", number / 365.25)
    )
    from_dates = F.when(
        birth_date.isNotNull() & study_date.isNotNull() & (study_date >= birth_date),
        F.floor(F.months_between(study_date, birth_date) / 12).cast("double"),
    )
    return F.round(F.coalesce(from_age, from_dates), 3)


def pn_component(name: Column, index: int) -> Column:
    """Component ``index`` (0 family, 1 given, 2 middle) of a PN's alphabetic group."""
    parts = F.split(F.coalesce(name, F.lit("")), r"\^")
    value = F.trim(F.element_at(parts, index + 1))
    return F.when(F.size(parts) > index, F.when(value != "", value))


def _sex(text: Column) -> Column:
    clean = F.upper(F.trim(text))
    return F.when(clean.isin("M", "F", "O"), clean)


def current_instances(bronze: DataFrame, lake_files: DataFrame) -> DataFrame:
    """The current bronze row of every instance whose file is still in the lake.

    ``versions`` counts the listed file versions of the instance (2 after a bulk
    update: the original is history, reachable in bronze).
    """
    key = ["file_path", "file_size", "last_modified", "etag"]
    listed = lake_files.where(F.col("kind") == "instance").select(*key)
    present = bronze.join(listed, [bronze[c].eqNullSafe(listed[c]) for c in key], "left_semi")
    instance = ["partition_name", "sop_instance_uid"]
    order = Window.partitionBy(*instance).orderBy(
        F.col("watermark").desc_nulls_last(),
        F.col("last_modified").desc_nulls_last(),
        F.col("file_path").desc(),
    )
    versions = Window.partitionBy(*instance)
    return (
        present.withColumn("_rank", F.row_number().over(order))
        .withColumn("versions", F.count(F.lit(1)).over(versions))
        .where(F.col("_rank") == 1)
        .drop("_rank")
    )


def typed_instances(current: DataFrame) -> DataFrame:
    """Typed silver_instances rows from current bronze rows."""
    # Two projections: the parsed JSON and the values used more than once are
    # computed first, so the optimiser never sees (or evaluates) a copy of them
    parsed = F.from_json(F.col("metadata_json"), _metadata_schema())
    staged = (
        current.withColumn("_m", parsed)
        .select(
            "*",
            *[_values_at(F.col("_m"), path).alias(f"_v_{n}") for n, path in _JSON_FIELDS.items()],
            parse_da(F.col("study_date")).alias("_study_date"),
            parse_da(F.col("patient_birth_date")).alias("_birth_date"),
            parse_tm(F.col("study_time")).alias("_study_time"),
        )
        .drop("_m")
    )
    vals = {name: F.col(f"_v_{name}") for name in _JSON_FIELDS}

    def first(name: str) -> Column:
        return F.element_at(vals[name], 1)

    study_date = F.col("_study_date")
    birth_date = F.col("_birth_date")
    study_time = F.col("_study_time")
    spacing = F.coalesce(vals["pixel_spacing"], vals["shared_pixel_spacing"])
    out = staged.select(
        "partition_name",
        "study_instance_uid",
        "series_instance_uid",
        "sop_instance_uid",
        F.upper(F.trim("modality")).alias("modality"),
        study_date.alias("study_date"),
        _sex(F.col("patient_sex")).alias("patient_sex"),
        age_years(F.col("patient_age"), birth_date, study_date).alias("patient_age_years"),
        F.coalesce(
            to_double(first("slice_thickness")), to_double(first("shared_slice_thickness"))
        ).alias("slice_thickness"),
        F.upper(F.trim("body_part_examined")).alias("body_part_examined"),
        "patient_id",
        "sop_class_uid",
        study_time.alias("study_time"),
        "series_number",
        "instance_number",
        "rows",
        "columns",
        F.coalesce(F.col("number_of_frames"), F.lit(1)).alias("number_of_frames"),
        to_double(F.element_at(spacing, 1)).alias("pixel_spacing_row"),
        to_double(F.when(F.size(spacing) >= 2, F.element_at(spacing, 2))).alias(
            "pixel_spacing_column"
        ),
        to_double(first("spacing_between_slices")).alias("spacing_between_slices"),
        to_double(first("kvp")).alias("kvp"),
        to_double(first("slice_location")).alias("slice_location"),
        F.array_join(vals["image_position_patient"], "\\").alias("image_position_patient"),
        F.array_join(vals["image_orientation_patient"], "\\").alias("image_orientation_patient"),
        F.array_join(vals["image_type"], "\\").alias("image_type"),
        F.array_join(vals["convolution_kernel"], "\\").alias("convolution_kernel"),
        first("contrast_bolus_agent").alias("contrast_bolus_agent"),
        first("protocol_name").alias("protocol_name"),
        first("institution_name").alias("institution_name"),
        first("laterality").alias("laterality"),
        to_double(first("patient_weight")).alias("patient_weight_kg"),
        to_double(first("patient_size")).alias("patient_size_m"),
        "manufacturer",
        "manufacturer_model_name",
        "patient_name",
        pn_component(F.col("patient_name"), 0).alias("patient_family_name"),
        pn_component(F.col("patient_name"), 1).alias("patient_given_name"),
        birth_date.alias("patient_birth_date"),
        "issuer_of_patient_id",
        "accession_number",
        "study_id",
        "study_description",
        "series_description",
        parse_da(F.col("series_date")).alias("series_date"),
        parse_tm(first("series_time")).alias("series_time"),
        parse_da(first("acquisition_date")).alias("acquisition_date"),
        F.when(
            study_date.isNotNull(),
            F.try_to_timestamp(
                F.concat(
                    F.date_format(study_date, "yyyy-MM-dd"),
                    F.lit(" "),
                    F.coalesce(F.substring(study_time, 1, 8), F.lit("00:00:00")),
                ),
                F.lit("yyyy-MM-dd HH:mm:ss"),
            ),
        ).alias("study_datetime"),
        "transfer_syntax_uid",
        (F.coalesce(F.col("number_of_frames"), F.lit(1)) > 1).alias("is_multiframe"),
        "is_updated_version",
        "versions",
        "file_path",
        "watermark",
        "file_size",
        "last_modified",
        "etag",
        "metadata_json",
        # raw texts, kept to count what could not be typed
        F.col("study_date").alias("_raw_study_date"),
        F.col("patient_birth_date").alias("_raw_birth_date"),
        F.col("study_time").alias("_raw_study_time"),
        first("slice_thickness").alias("_raw_slice_thickness"),
        F.col("patient_age").alias("_raw_patient_age"),
    )
    return out


def coercion_counts(typed: DataFrame) -> dict[str, int]:
    """How many values were present but could not be typed (set to NULL)."""

    def bad(raw: str, typed_col: str) -> Column:
        present = F.col(raw).isNotNull() & (F.trim(F.col(raw)) != "")
        return F.sum(F.when(present & F.col(typed_col).isNull(), 1).otherwise(0))

    row = typed.agg(
        bad("_raw_study_date", "study_date").alias("invalid_study_date"),
        bad("_raw_birth_date", "patient_birth_date").alias("invalid_birth_date"),
        bad("_raw_study_time", "study_time").alias("invalid_study_time"),
        bad("_raw_slice_thickness", "slice_thickness").alias("invalid_slice_thickness"),
        bad("_raw_patient_age", "patient_age_years").alias("invalid_patient_age"),
    ).first()
    return {k: int(v or 0) for k, v in (row.asDict() if row else {}).items()}


def drop_raw(typed: DataFrame) -> DataFrame:
    return typed.drop(*[c for c in typed.columns if c.startswith("_raw_")])


def _latest(col: str, order: Column | None = None) -> Column:
    """The value of ``col`` on the row with the highest ``order`` (by default the
    watermark), nulls skipped."""
    by = F.col("watermark") if order is None else order
    return F.max_by(F.col(col), F.when(F.col(col).isNotNull(), by))


def _joined_set(col: str) -> Column:
    return F.array_join(F.array_sort(F.collect_set(F.col(col))), ",")


def series_from_instances(instances: DataFrame) -> DataFrame:
    """One row per series with counts and series-level attributes."""
    return instances.groupBy("partition_name", "study_instance_uid", "series_instance_uid").agg(
        _latest("modality").alias("modality"),
        _latest("study_date").alias("study_date"),
        _latest("patient_sex").alias("patient_sex"),
        _latest("patient_age_years").alias("patient_age_years"),
        _latest("body_part_examined").alias("body_part_examined"),
        _latest("series_number").alias("series_number"),
        _latest("series_description").alias("series_description"),
        _latest("series_date").alias("series_date"),
        F.count(F.lit(1)).alias("instance_count"),
        F.sum("number_of_frames").cast("long").alias("frame_count"),
        F.min("slice_thickness").alias("min_slice_thickness"),
        F.max("slice_thickness").alias("max_slice_thickness"),
        _latest("pixel_spacing_row").alias("pixel_spacing_row"),
        _latest("pixel_spacing_column").alias("pixel_spacing_column"),
        _latest("rows").alias("rows"),
        _latest("columns").alias("columns"),
        _latest("manufacturer").alias("manufacturer"),
        _latest("manufacturer_model_name").alias("manufacturer_model_name"),
        _latest("convolution_kernel").alias("convolution_kernel"),
        _joined_set("sop_class_uid").alias("sop_class_uids"),
        _latest("patient_id").alias("patient_id"),
        _latest("issuer_of_patient_id").alias("issuer_of_patient_id"),
        _latest("patient_name").alias("patient_name"),
        _latest("study_description").alias("study_description"),
        F.max("last_modified").alias("last_modified"),
    )


def studies_from_instances(instances: DataFrame) -> DataFrame:
    """One row per study: latest-wins study attributes, counts, sets and ranges."""
    conflicts = sum(
        (F.when(F.countDistinct(F.col(a)) > 1, 1).otherwise(0) for a in STUDY_ATTRIBUTES),
        F.lit(0),
    )
    return instances.groupBy("partition_name", "study_instance_uid").agg(
        *[_latest(a).alias(a) for a in STUDY_ATTRIBUTES],
        _latest("patient_family_name").alias("patient_family_name"),
        _latest("patient_given_name").alias("patient_given_name"),
        _latest("patient_age_years").alias("patient_age_years"),
        _latest("study_datetime").alias("study_datetime"),
        _latest("study_id").alias("study_id"),
        _joined_set("modality").alias("modalities"),
        _joined_set("body_part_examined").alias("body_parts"),
        F.countDistinct("series_instance_uid").alias("series_count"),
        F.count(F.lit(1)).alias("instance_count"),
        F.min("slice_thickness").alias("min_slice_thickness"),
        F.max("slice_thickness").alias("max_slice_thickness"),
        F.min("series_date").alias("first_series_date"),
        F.max("series_date").alias("last_series_date"),
        _joined_set("manufacturer").alias("manufacturers"),
        conflicts.alias("attribute_conflicts"),
        F.max("last_modified").alias("last_modified"),
    )


def patients_from_studies(studies: DataFrame) -> DataFrame:
    """One row per (partition, issuer, patient id), rolled up from silver studies.

    A study counts under its own (latest-wins) patient id; the patient's name, sex
    and birth date come from the study written last (highest ``last_modified``,
    then study UID), so a rollup reads the small studies table, never instances."""
    order = F.struct(F.col("last_modified"), F.col("study_instance_uid"))
    return studies.groupBy("partition_name", "issuer_of_patient_id", "patient_id").agg(
        *[_latest(c, order).alias(c) for c in PATIENT_ATTRIBUTES],
        F.count(F.lit(1)).alias("study_count"),
        F.sum("instance_count").alias("instance_count"),
        F.min("study_date").alias("first_study_date"),
        F.max("study_date").alias("last_study_date"),
    )
