"""Vocabulary of the synthetic demo catalogue: the real 13 top-level categories (names as in the real
export), a few real sub-categories each, with items, brands, price ranges and the shape drawn in photos."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CategorySpec:
    name: str
    shape: str  # the drawing in catalog.demo_draw
    price_range: tuple[float, float]
    brands: tuple[str, ...]
    subcategories: dict[str, tuple[str, ...]]  # sub-category path tail -> item nouns
    words: tuple[str, ...]  # category-specific description words


CATEGORIES: tuple[CategorySpec, ...] = (
    CategorySpec(
        "Appliances",
        "appliance",
        (25, 900),
        ("Bosch", "Hotpoint", "Beko", "Samsung", "Indesit", "Zanussi", "Dyson", "Russell Hobbs"),
        {
            "Home Appliances / Washing Machines": ("washing machine", "washer dryer", "tumble dryer"),
            "Fridge Freezers": ("fridge freezer", "under counter fridge", "chest freezer"),
            "Small Appliances": ("microwave", "kettle", "toaster", "vacuum cleaner"),
            "Ovens, Hobs & Cookers": ("electric cooker", "gas hob", "built in oven"),
        },
        ("energy rating", "kg load", "frost free", "spin", "integrated", "plumbed", "litre", "watt"),
    ),
    CategorySpec(
        "Baby & Kids Stuff",
        "teddy",
        (3, 250),
        ("Mamas & Papas", "Silver Cross", "Chicco", "Fisher-Price", "Joie", "Tommee Tippee", "LEGO"),
        {
            "Toys": ("teddy bear", "soft toy", "toy garage", "play kitchen"),
            "Prams & Strollers": ("pram", "pushchair", "travel system", "buggy"),
            "Nursery & Children's Furniture": ("cot bed", "high chair", "changing table"),
            "Kids Clothes, Shoes & Accessories": ("baby grow bundle", "kids coat", "school shoes"),
        },
        ("toddler", "newborn", "age 3+", "nursery", "smoke free home", "hardly used by baby", "kids"),
    ),
    CategorySpec(
        "Clothes, Footwear & Accessories",
        "tshirt",
        (3, 200),
        ("Nike", "Adidas", "Zara", "Next", "Levi's", "Superdry", "The North Face", "Barbour"),
        {
            "Men's Clothing": ("t-shirt", "jacket", "hoodie", "jumper"),
            "Women's Clothing": ("dress", "blouse", "coat", "cardigan"),
            "Women's Shoes": ("heels", "ankle boots", "trainers"),
            "Jewellery": ("necklace", "bracelet", "earrings"),
        },
        ("size 10", "size M", "size L", "cotton", "wool", "worn once", "fits true to size", "slim fit"),
    ),
    CategorySpec(
        "Computers & Software",
        "laptop",
        (40, 1400),
        ("Dell", "HP", "Lenovo", "Apple", "Asus", "Acer", "Microsoft"),
        {
            "Computers, Laptops & Netbooks / Laptops": ("laptop", "notebook", "chromebook", "macbook"),
            "Computers, Laptops & Netbooks / Desktop & Workstation PCs": ("desktop pc", "gaming pc", "all in one pc"),
            "Software": ("office licence", "antivirus software"),
        },
        ("intel core i5", "ssd", "8gb ram", "16gb ram", "windows 11", "screen", "charger included", "hdmi"),
    ),
    CategorySpec(
        "DIY Tools & Materials",
        "hammer",
        (5, 400),
        ("DeWalt", "Makita", "Bosch", "Stanley", "Ryobi", "Black & Decker", "Milwaukee"),
        {
            "Power Tools": ("cordless drill", "angle grinder", "circular saw", "impact driver"),
            "Hand Tools": ("claw hammer", "socket set", "spirit level", "toolbox"),
            "Building Materials": ("timber lengths", "plasterboard", "paving slabs"),
            "Doors & Windows": ("internal door", "upvc window"),
        },
        ("18v", "battery", "trade quality", "workshop", "diy", "brushless", "garage clear out", "tools"),
    ),
    CategorySpec(
        "Health & Beauty",
        "bottle",
        (2, 150),
        ("L'Oreal", "Dior", "Chanel", "Nivea", "GHD", "Remington", "Boots"),
        {
            "Fragrances": ("perfume", "eau de parfum", "aftershave"),
            "Make Up & Cosmetics": ("lipstick set", "foundation", "make up palette"),
            "Hair Care & Styling": ("hair straighteners", "hair dryer", "curling wand"),
            "Mobility, Disability & Medical": ("mobility scooter", "walking frame", "wheelchair"),
        },
        ("ml", "sealed", "skin", "fragrance", "unwanted gift", "salon", "beauty", "gentle"),
    ),
    CategorySpec(
        "Home & Garden",
        "sofa",
        (10, 1200),
        ("DFS", "IKEA", "John Lewis", "Dunelm", "Habitat", "Argos Home", "Keter"),
        {
            "Dining, Living Room Furniture / Sofas, Armchairs & Suites": ("corner sofa", "armchair", "sofa bed"),
            "Dining, Living Room Furniture / Tables": ("dining table", "coffee table"),
            "Beds & Bedroom Furniture": ("double bed", "wardrobe", "chest of drawers"),
            "Garden & Patio": ("garden bench", "patio set", "sun loungers"),
        },
        ("seater", "fabric", "oak", "living room", "cushions", "collection only", "solid wood", "garden"),
    ),
    CategorySpec(
        "Music, Films, Books & Games",
        "disc",
        (1, 120),
        ("Penguin", "Marvel", "Sony Music", "Warner", "Fender", "Yamaha", "Hasbro"),
        {
            "Books, Comics & Magazines": ("book collection", "comic bundle", "hardback novel"),
            "Music / Vinyl": ("vinyl record", "lp collection", "cd album"),
            "Films & TV": ("dvd boxset", "blu-ray collection"),
            "Music / Instruments": ("acoustic guitar", "keyboard", "drum kit"),
        },
        ("album", "edition", "track", "paperback", "chapters", "strings", "author", "series"),
    ),
    CategorySpec(
        "Office Furniture & Equipment",
        "chair",
        (10, 700),
        ("Herman Miller", "Steelcase", "Brother", "Canon", "Fellowes", "Viking", "Rexel"),
        {
            "Office Furniture": ("office chair", "desk chair", "filing cabinet", "office desk"),
            "Restaurant & Catering Equipment": ("commercial fridge", "catering trolley"),
            "Supplies, Equipment & Stationery": ("printer", "paper shredder", "laminator"),
            "Retail & Shop Fittings": ("display shelving", "shop counter"),
        },
        ("ergonomic", "swivel", "lumbar", "adjustable height", "commercial", "office clearance", "castors"),
    ),
    CategorySpec(
        "Other Goods",
        "star",
        (1, 300),
        ("Royal Doulton", "Wedgwood", "Hornby", "Swarovski", "Poole Pottery", "Beswick"),
        {
            "Hobbies, Interests & Collectibles": ("model railway", "coin collection", "stamp album"),
            "Antiques": ("antique vase", "brass clock", "victorian mirror"),
            "Scrapbooking, Sewing, Art, Craft": ("sewing machine", "craft supplies", "easel"),
            "Other": ("job lot", "mixed box"),
        },
        ("vintage", "collectable", "rare", "antique", "craft", "display", "ornament", "hobby"),
    ),
    CategorySpec(
        "Phones, Mobile Phones & Telecoms",
        "phone",
        (15, 900),
        ("Apple", "Samsung", "Google", "Motorola", "Nokia", "OnePlus", "Huawei"),
        {
            "Mobile Phones": ("iphone", "galaxy phone", "smartphone", "pixel phone"),
            "Mobile Phone Accessories": ("phone case", "fast charger", "power bank"),
            "Smart Watch": ("smart watch", "fitness tracker"),
            "Home Phones & Answering Machines": ("cordless phone", "answering machine"),
        },
        ("unlocked", "128gb", "64gb", "any network", "battery health", "sim free", "screen protector"),
    ),
    CategorySpec(
        "Sports, Leisure & Travel",
        "bicycle",
        (5, 1500),
        ("Carrera", "Specialized", "Trek", "Boardman", "Raleigh", "Callaway", "Decathlon"),
        {
            "Bicycles": ("mountain bike", "road bike", "kids bike", "electric bike"),
            "Fitness & Gym Equipment": ("treadmill", "dumbbells", "exercise bike"),
            "Golf Equipment": ("golf clubs", "golf bag"),
            "Camping & Hiking": ("tent", "rucksack"),
        },
        ("gears", "frame", "wheels", "suspension", "gym", "outdoor", "training", "size medium frame"),
    ),
    CategorySpec(
        "Video Games & Consoles",
        "gamepad",
        (5, 500),
        ("Sony", "Nintendo", "Microsoft", "Xbox", "PlayStation", "Sega", "Turtle Beach"),
        {
            "Consoles": ("ps5 console", "xbox series x", "nintendo switch", "ps4 console"),
            "Games": ("game bundle", "fifa game", "mario game"),
            "Video Game Accessories": ("controller", "gaming headset", "charging dock"),
        },
        ("console", "controller", "gaming", "games", "online", "disc edition", "boxed with cables"),
    ),
)

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (200, 35, 35),
    "blue": (35, 75, 200),
    "green": (40, 150, 60),
    "yellow": (235, 205, 40),
    "black": (25, 25, 25),
    "white": (240, 240, 240),
    "grey": (128, 128, 128),
    "pink": (235, 120, 170),
    "purple": (125, 50, 160),
    "orange": (240, 130, 30),
    "brown": (120, 75, 35),
}

CONDITIONS = (
    "brand new",
    "like new",
    "excellent condition",
    "good condition",
    "used",
    "well used",
    "boxed",
    "unused",
    "spares or repairs",
)

GENERIC_PHRASES = (
    "Collection only",
    "Can deliver locally for a small fee",
    "Cash on collection",
    "No time wasters please",
    "Open to sensible offers",
    "From a pet and smoke free home",
    "Any questions just ask",
    "Quick sale wanted",
    "Moving house so must go",
    "Price is firm",
    "Paypal accepted",
    "Message me for more photos",
)

# (town, county); a few single names as in the real export ("London", "County Antrim").
LOCATIONS: tuple[tuple[str, str | None], ...] = (
    ("Inverness", "Highland"),
    ("Skegness", "Lincolnshire"),
    ("Huddersfield", "West Yorkshire"),
    ("Delph", "Manchester"),
    ("Leeds", "West Yorkshire"),
    ("Sheffield", "South Yorkshire"),
    ("Bristol", "Bristol"),
    ("Cardiff", "Cardiff"),
    ("Swansea", "Swansea"),
    ("Brighton", "East Sussex"),
    ("Reading", "Berkshire"),
    ("Oxford", "Oxfordshire"),
    ("Cambridge", "Cambridgeshire"),
    ("Norwich", "Norfolk"),
    ("Ipswich", "Suffolk"),
    ("Exeter", "Devon"),
    ("Plymouth", "Devon"),
    ("Truro", "Cornwall"),
    ("Bath", "Somerset"),
    ("Gloucester", "Gloucestershire"),
    ("Birmingham", "West Midlands"),
    ("Coventry", "West Midlands"),
    ("Leicester", "Leicestershire"),
    ("Nottingham", "Nottinghamshire"),
    ("Derby", "Derbyshire"),
    ("Liverpool", "Merseyside"),
    ("Chester", "Cheshire"),
    ("Preston", "Lancashire"),
    ("Newcastle upon Tyne", "Tyne and Wear"),
    ("Durham", "County Durham"),
    ("York", "North Yorkshire"),
    ("Hull", "East Riding of Yorkshire"),
    ("Glasgow", "Glasgow"),
    ("Edinburgh", "Edinburgh"),
    ("Aberdeen", "Aberdeenshire"),
    ("Dundee", "Dundee"),
    ("Belfast", "County Antrim"),
    ("Derry", "County Londonderry"),
    ("Canterbury", "Kent"),
    ("Chelmsford", "Essex"),
    ("Guildford", "Surrey"),
    ("Southampton", "Hampshire"),
    ("London", None),
    ("County Antrim", None),
    ("Aberdeen", None),
)
